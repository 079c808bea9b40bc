//! One adlob's canvas: the ordered list of its live elements.

use crate::protocol::canvas::CanvasOp;
use crate::protocol::{ErrorCode, Rejection, check_version};
use serde::{Deserialize, Serialize};

/// Bounds that keep one room's memory finite whatever its players send.
pub const MAX_CANVASES: usize = 64;
pub const MAX_OPS: usize = 2_000;
/// Bytes of one canvas's elements, as they are sent (their JSON).
pub const MAX_BYTES: usize = 1024 * 1024;
/// Bytes of all the canvases of one room together. `hello_ack` carries every canvas,
/// so this bound keeps a join deliverable within a socket's queue budget
/// (`OUTBOUND_QUEUE_BYTES` may not be set below `hello_ack`'s largest size).
pub const MAX_ROOM_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredCanvas")]
pub struct Canvas {
    /// Live elements in drawing order (only stroke, text and image ops).
    pub ops: Vec<CanvasOp>,
    /// The room version of the last change to this canvas.
    pub version: u64,
    /// The JSON size of `ops`; derived, never read from a stored row.
    #[serde(skip)]
    bytes: usize,
}

/// A canvas as a stored row holds it, checked like any other input before it
/// becomes a `Canvas` (each element valid, the bounds held, the size recomputed).
#[derive(Deserialize)]
struct StoredCanvas {
    ops: Vec<CanvasOp>,
    version: u64,
}

impl TryFrom<StoredCanvas> for Canvas {
    type Error = String;

    fn try_from(stored: StoredCanvas) -> Result<Canvas, String> {
        Canvas::from_ops(stored.ops, stored.version).map_err(|why| why.message)
    }
}

impl Canvas {
    /// Applies a validated op, if the canvas stays within its bounds and within
    /// `room_left`, the bytes the room's other canvases leave it. On error the canvas
    /// is unchanged.
    pub fn apply(&mut self, op: CanvasOp, version: u64, room_left: usize) -> Result<(), Rejection> {
        match op {
            CanvasOp::Clear => {
                self.ops.clear();
                self.bytes = 0;
            }
            CanvasOp::Remove { id } => {
                let at = self.position(&id).ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::InvalidPayload,
                        format!("no element with id {id}"),
                    )
                })?;
                let removed = self.ops.remove(at);
                self.bytes = self.bytes.saturating_sub(json_len(&removed));
            }
            element => {
                let size = json_len(&element);
                let at = element.id().and_then(|id| self.position(id));
                let replaced = at.map(|i| json_len(&self.ops[i])).unwrap_or(0);
                let count = self.ops.len() + usize::from(at.is_none());
                let bytes = self.bytes.saturating_sub(replaced).saturating_add(size);
                if count > MAX_OPS || bytes > MAX_BYTES {
                    return Err(Rejection::new(
                        ErrorCode::InvalidPayload,
                        format!("canvas is full ({MAX_OPS} elements or {MAX_BYTES} bytes)"),
                    ));
                }
                // Only growth is judged, so a room over its bound (from an older
                // server's rows) can still shrink.
                if bytes > self.bytes && bytes > room_left {
                    return Err(Rejection::new(
                        ErrorCode::InvalidPayload,
                        format!("the room's canvases are full ({MAX_ROOM_BYTES} bytes in all)"),
                    ));
                }
                self.bytes = bytes;
                match at {
                    Some(i) => self.ops[i] = element,
                    None => self.ops.push(element),
                }
            }
        }
        self.version = version;
        Ok(())
    }

    /// The JSON size of the canvas's elements.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A canvas from stored elements (a snapshot or canvas row read back), validated
    /// like any other input: only elements, each valid, ids unique, within the bounds,
    /// and its size recomputed rather than read.
    pub fn from_ops(ops: Vec<CanvasOp>, version: u64) -> Result<Canvas, Rejection> {
        let invalid = |why: String| Rejection::new(ErrorCode::InvalidPayload, why);
        check_version("canvas.version", version)?;
        if ops.len() > MAX_OPS {
            return Err(invalid(format!(
                "a canvas holds at most {MAX_OPS} elements"
            )));
        }
        let mut ids = std::collections::HashSet::new();
        let mut bytes = 0usize;
        for op in &ops {
            let id = match op {
                CanvasOp::Remove { .. } | CanvasOp::Clear => None,
                element => element.id(),
            }
            .ok_or_else(|| invalid("a stored canvas holds only elements".to_string()))?;
            if !ids.insert(id) {
                return Err(invalid(format!("element id {id} appears twice")));
            }
            op.validate()?;
            bytes = bytes.saturating_add(json_len(op));
        }
        if bytes > MAX_BYTES {
            return Err(invalid(format!("a canvas holds at most {MAX_BYTES} bytes")));
        }
        Ok(Canvas {
            ops,
            version,
            bytes,
        })
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.ops.iter().position(|op| op.id() == Some(id))
    }
}

/// The size of `op` as JSON: what it costs in every `hello_ack` and snapshot.
fn json_len(op: &CanvasOp) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing plain data into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, op);
    count.0
}
