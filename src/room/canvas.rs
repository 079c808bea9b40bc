//! One adlob's canvas: the ordered list of its live elements.

use crate::protocol::canvas::CanvasOp;
use crate::protocol::{ErrorCode, Rejection};
use serde::{Deserialize, Serialize};

/// Bounds that keep one room's memory finite whatever its players send.
pub const MAX_CANVASES: usize = 64;
pub const MAX_OPS: usize = 2_000;
pub const MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Canvas {
    /// Live elements in drawing order (only stroke, text and image ops).
    pub ops: Vec<CanvasOp>,
    /// The room version of the last change to this canvas.
    pub version: u64,
    /// Approximate size of `ops`, to bound memory.
    bytes: usize,
}

impl Canvas {
    /// Applies a validated op. On error the canvas is unchanged.
    pub fn apply(&mut self, op: CanvasOp, version: u64) -> Result<(), Rejection> {
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
                self.bytes -= approx_size(&removed);
            }
            element => {
                let size = approx_size(&element);
                let at = element.id().and_then(|id| self.position(id));
                let replaced = at.map(|i| approx_size(&self.ops[i])).unwrap_or(0);
                let count = self.ops.len() + usize::from(at.is_none());
                if count > MAX_OPS || self.bytes - replaced + size > MAX_BYTES {
                    return Err(Rejection::new(
                        ErrorCode::InvalidPayload,
                        format!("canvas is full ({MAX_OPS} elements or {MAX_BYTES} bytes)"),
                    ));
                }
                self.bytes = self.bytes - replaced + size;
                match at {
                    Some(i) => self.ops[i] = element,
                    None => self.ops.push(element),
                }
            }
        }
        self.version = version;
        Ok(())
    }

    /// A canvas from stored elements (a canvas row read back at start-up), validated
    /// like any other input: only elements, each valid, ids unique, within the bounds.
    pub fn from_ops(ops: Vec<CanvasOp>, version: u64) -> Result<Canvas, Rejection> {
        let invalid = |why: String| Rejection::new(ErrorCode::InvalidPayload, why);
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
            bytes = bytes.saturating_add(approx_size(op));
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

fn approx_size(op: &CanvasOp) -> usize {
    const FIXED: usize = 64;
    match op {
        CanvasOp::Stroke(s) => FIXED + s.id.len() + s.color.len() + s.points.len() * 24,
        CanvasOp::Text(t) => FIXED + t.id.len() + t.text.len() + t.color.len(),
        CanvasOp::Image(i) => FIXED + i.id.len() + i.src.len(),
        CanvasOp::Remove { id } => FIXED + id.len(),
        CanvasOp::Clear => FIXED,
    }
}
