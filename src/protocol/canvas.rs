//! Canvas deltas: the typed shapes of `submit_canvas_delta.delta` and their bounds.
//!
//! A delta is validated completely before it reaches a room, and what is broadcast is
//! the re-serialized validated value (unknown fields dropped), never the raw input.

use super::{ErrorCode, Rejection, check_free_text, check_id, limits};
use serde::{Deserialize, Serialize};

pub const STROKE_WIDTH: (f64, f64) = (1.0, 40.0);
pub const FONT_SIZE: (f64, f64) = (8.0, 96.0);
pub const TEXT_MAX: usize = 280;
pub const POINTS_MAX: usize = 4096;
pub const COLOR_MAX: usize = 32;
pub const SRC_MAX: usize = 48 * 1024;
pub const COORD_MAX: f64 = 100_000.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CanvasOp {
    Stroke(Stroke),
    Text(TextBox),
    Image(Image),
    Remove { id: String },
    Clear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stroke {
    pub id: String,
    pub color: String,
    pub width: f64,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TextBox {
    pub id: String,
    pub text: String,
    pub x: f64,
    pub y: f64,
    pub color: String,
    pub font_size: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align: Option<TextAlign>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub font_family: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextAlign {
    Left,
    Center,
    Right,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub src: String,
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<f64>,
}

impl CanvasOp {
    /// The element id this op adds, replaces or removes (`clear` has none).
    pub fn id(&self) -> Option<&str> {
        match self {
            CanvasOp::Stroke(s) => Some(&s.id),
            CanvasOp::Text(t) => Some(&t.id),
            CanvasOp::Image(i) => Some(&i.id),
            CanvasOp::Remove { id } => Some(id),
            CanvasOp::Clear => None,
        }
    }

    /// Decodes and validates a delta from its JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<CanvasOp, Rejection> {
        let op: CanvasOp = serde_json::from_value(value)
            .map_err(|e| invalid(format!("delta is not a valid canvas op: {e}")))?;
        op.validate()?;
        Ok(op)
    }

    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            CanvasOp::Stroke(s) => {
                check_id("delta.id", &s.id, limits::ID_MAX)?;
                check_color(&s.color)?;
                check_range("delta.width", s.width, STROKE_WIDTH)?;
                if s.points.len() < 2 || s.points.len() > POINTS_MAX {
                    return Err(invalid(format!(
                        "delta.points must hold 2..{POINTS_MAX} points"
                    )));
                }
                for p in &s.points {
                    check_coord("delta.points.x", p.x)?;
                    check_coord("delta.points.y", p.y)?;
                    if let Some(pressure) = p.pressure {
                        check_range("delta.points.pressure", pressure, (0.0, 1.0))?;
                    }
                }
            }
            CanvasOp::Text(t) => {
                check_id("delta.id", &t.id, limits::ID_MAX)?;
                check_free_text("delta.text", &t.text, TEXT_MAX)?;
                check_coord("delta.x", t.x)?;
                check_coord("delta.y", t.y)?;
                check_color(&t.color)?;
                check_range("delta.fontSize", t.font_size, FONT_SIZE)?;
                if let Some(family) = &t.font_family {
                    check_id("delta.fontFamily", family, 64)?;
                }
            }
            CanvasOp::Image(i) => {
                check_id("delta.id", &i.id, limits::ID_MAX)?;
                check_src(&i.src)?;
                check_coord("delta.x", i.x)?;
                check_coord("delta.y", i.y)?;
                check_positive("delta.width", i.width)?;
                check_positive("delta.height", i.height)?;
                if let Some(r) = i.rotation {
                    check_range("delta.rotation", r, (-360.0, 360.0))?;
                }
            }
            CanvasOp::Remove { id } => check_id("delta.id", id, limits::ID_MAX)?,
            CanvasOp::Clear => {}
        }
        Ok(())
    }
}

fn invalid(message: String) -> Rejection {
    Rejection::new(ErrorCode::InvalidPayload, message)
}

fn check_range(field: &str, v: f64, (lo, hi): (f64, f64)) -> Result<(), Rejection> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(invalid(format!("{field} must be between {lo} and {hi}")))
    }
}

fn check_coord(field: &str, v: f64) -> Result<(), Rejection> {
    check_range(field, v, (-COORD_MAX, COORD_MAX))
}

fn check_positive(field: &str, v: f64) -> Result<(), Rejection> {
    if v.is_finite() && v > 0.0 && v <= COORD_MAX {
        Ok(())
    } else {
        Err(invalid(format!("{field} must be > 0 and <= {COORD_MAX}")))
    }
}

fn check_color(color: &str) -> Result<(), Rejection> {
    check_id("delta.color", color, COLOR_MAX)
}

/// Inline image types a delta may carry (no SVG: it can hold script).
pub const DATA_IMAGE_PREFIXES: [&str; 4] = [
    "data:image/png;",
    "data:image/jpeg;",
    "data:image/gif;",
    "data:image/webp;",
];

/// Image sources are URLs every other player's browser will load: https, paths on
/// the app's own origin (not `//host`), and raster inline images. A delta can never
/// smuggle a `javascript:` URL, a foreign protocol-relative host or SVG to others.
fn check_src(src: &str) -> Result<(), Rejection> {
    if src.len() > SRC_MAX {
        return Err(invalid(format!("delta.src is longer than {SRC_MAX} bytes")));
    }
    let same_origin_path = src.starts_with('/') && !src.starts_with("//");
    let allowed = src.starts_with("https://")
        || same_origin_path
        || DATA_IMAGE_PREFIXES.iter().any(|p| src.starts_with(p));
    if !allowed {
        return Err(invalid(
            "delta.src must be an https URL, a /path, or a png/jpeg/gif/webp data URL".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_each_op() {
        for v in [
            json!({"op":"stroke","id":"s1","color":"#000","width":3,"points":[{"x":0,"y":0},{"x":1,"y":1,"pressure":0.5}]}),
            json!({"op":"text","id":"t1","text":"hi","x":1,"y":2,"color":"red","fontSize":12,"align":"center"}),
            json!({"op":"image","id":"i1","src":"https://x/y.png","x":0,"y":0,"width":10,"height":10,"rotation":45}),
            json!({"op":"remove","id":"s1"}),
            json!({"op":"clear"}),
        ] {
            assert!(CanvasOp::from_value(v.clone()).is_ok(), "{v}");
        }
    }

    #[test]
    fn rejects_out_of_bounds() {
        for v in [
            json!({"op":"stroke","id":"s1","color":"#000","width":41,"points":[{"x":0,"y":0},{"x":1,"y":1}]}),
            json!({"op":"stroke","id":"s1","color":"#000","width":0.5,"points":[{"x":0,"y":0},{"x":1,"y":1}]}),
            json!({"op":"stroke","id":"s1","color":"#000","width":3,"points":[{"x":0,"y":0}]}),
            json!({"op":"text","id":"t1","text":"x".repeat(281),"x":1,"y":2,"color":"red","fontSize":12}),
            json!({"op":"text","id":"t1","text":"x","x":1,"y":2,"color":"red","fontSize":7}),
            json!({"op":"text","id":"t1","text":"x","x":1,"y":2,"color":"red","fontSize":97}),
            json!({"op":"image","id":"i1","src":"javascript:alert(1)","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"//evil.example/x.png","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"http://plain.example/x.png","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"data:image/svg+xml;base64,PHN2Zz4=","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"/a.png","x":0,"y":0,"width":0,"height":10}),
            json!({"op":"remove","id":""}),
            json!({"op":"explode"}),
            json!({"id":"x"}),
            json!("clear"),
        ] {
            let err = CanvasOp::from_value(v.clone()).expect_err(&v.to_string());
            assert_eq!(err.code, ErrorCode::InvalidPayload);
        }
    }

    #[test]
    fn text_limit_counts_characters_not_bytes() {
        let v = json!({"op":"text","id":"t","text":"é".repeat(280),"x":0,"y":0,"color":"c","fontSize":8});
        assert!(CanvasOp::from_value(v).is_ok());
    }
}
