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
                // The form only; which forms and hosts are allowed is `check_sources`.
                classify(&i.src)?;
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

/// What an image `src` is, once parsed the strict way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `/path` on the app's own origin.
    SameOrigin,
    /// A raster `data:` URL.
    Data,
    /// `https://host[:port]…`.
    Https(HttpsOrigin),
}

/// An https origin: lower-case ASCII host and port (443 when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpsOrigin {
    host: String,
    port: u16,
}

impl std::fmt::Display for HttpsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            443 => write!(f, "https://{}", self.host),
            port => write!(f, "https://{}:{port}", self.host),
        }
    }
}

/// Which image sources other players' browsers may be made to load
/// (`IMAGE_SOURCES`): same-origin paths (`self`), raster data URLs (`data`), and any
/// number of explicit https origins. Default: `self,data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePolicy {
    same_origin: bool,
    data: bool,
    origins: Vec<HttpsOrigin>,
}

impl Default for ImagePolicy {
    fn default() -> ImagePolicy {
        ImagePolicy {
            same_origin: true,
            data: true,
            origins: Vec::new(),
        }
    }
}

impl ImagePolicy {
    /// Parses `self`, `data` and `https://host[:port]` items, comma-separated.
    pub fn parse(text: &str) -> Result<ImagePolicy, String> {
        let mut policy = ImagePolicy {
            same_origin: false,
            data: false,
            origins: Vec::new(),
        };
        for item in text.split(',').map(str::trim) {
            match item {
                "self" => policy.same_origin = true,
                "data" => policy.data = true,
                _ => {
                    // An origin is scheme, host and port: nothing after but one `/`.
                    let origin = item
                        .strip_prefix("https://")
                        .and_then(|rest| parse_origin(rest).ok())
                        .filter(|(_, tail)| matches!(*tail, "" | "/"))
                        .map(|(origin, _)| origin)
                        .ok_or_else(|| {
                            format!(
                                "expected a comma-separated list of self, data and \
                                 https://host[:port], got {item:?}"
                            )
                        })?;
                    policy.origins.push(origin);
                }
            }
        }
        Ok(policy)
    }

    fn allows(&self, source: &Source) -> bool {
        match source {
            Source::SameOrigin => self.same_origin,
            Source::Data => self.data,
            Source::Https(origin) => self.origins.contains(origin),
        }
    }

    /// The allowed sources in words, for the refusal a client receives.
    fn describe(&self) -> String {
        let mut allowed = Vec::new();
        if self.same_origin {
            allowed.push("a /path".to_string());
        }
        if self.data {
            allowed.push("a png/jpeg/gif/webp data URL".to_string());
        }
        allowed.extend(self.origins.iter().map(|o| format!("{o}/…")));
        allowed.join(", ")
    }
}

/// `host[:port]` at the start of `rest` (what follows `https://`), and the rest of
/// the URL, which must start a path, query or fragment. Only DNS names and IPv4
/// (`A-Z a-z 0-9 . -`) are accepted: no userinfo (`@`), no percent-encoding, no
/// backslash, no IPv6 brackets, so the host read here is the host a browser loads.
fn parse_origin(rest: &str) -> Result<(HttpsOrigin, &str), ()> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.split_once(':') {
        None => (authority, 443),
        Some((host, port)) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            (host, port.parse::<u16>().map_err(|_| ())?)
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !host_ok || port == 0 {
        return Err(());
    }
    Ok((
        HttpsOrigin {
            host: host.to_ascii_lowercase(),
            port,
        },
        tail,
    ))
}

/// Parses an image `src` strictly. Browsers strip tabs and newlines from URLs and
/// treat `\` like `/`, so `/\evil.example/x.png` or `/<tab>/evil.example` would load
/// from another host: any whitespace or control character is refused outright, and a
/// same-origin path is one `/` followed by anything but `/` or `\`.
fn classify(src: &str) -> Result<Source, Rejection> {
    if src.len() > SRC_MAX {
        return Err(invalid(format!("delta.src is longer than {SRC_MAX} bytes")));
    }
    if src.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "delta.src must not contain whitespace or control characters".into(),
        ));
    }
    if DATA_IMAGE_PREFIXES.iter().any(|p| src.starts_with(p)) {
        return Ok(Source::Data);
    }
    if let Some(rest) = src.strip_prefix("https://") {
        return parse_origin(rest)
            .map(|(origin, _)| Source::Https(origin))
            .map_err(|()| {
                invalid(
                    "delta.src https URLs must be https://host[:port]/… with no user name".into(),
                )
            });
    }
    let mut bytes = src.bytes();
    if bytes.next() == Some(b'/') && bytes.next().is_some_and(|b| b != b'/' && b != b'\\') {
        return Ok(Source::SameOrigin);
    }
    Err(invalid(
        "delta.src must be an https URL, a /path, or a png/jpeg/gif/webp data URL".into(),
    ))
}

impl CanvasOp {
    /// Checks an image's source against the configured policy; other ops pass.
    /// Separate from `validate` so decoding needs no configuration.
    pub fn check_sources(&self, policy: &ImagePolicy) -> Result<(), Rejection> {
        let CanvasOp::Image(image) = self else {
            return Ok(());
        };
        if policy.allows(&classify(&image.src)?) {
            Ok(())
        } else {
            Err(invalid(format!(
                "delta.src is not an allowed image source (allowed: {})",
                policy.describe()
            )))
        }
    }
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
            json!({"op":"image","id":"i1","src":"/\\evil.example/x.png","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"/\t/evil.example/x.png","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"/\n/evil.example/x.png","x":0,"y":0,"width":10,"height":10}),
            json!({"op":"image","id":"i1","src":"https://user@evil.example/x.png","x":0,"y":0,"width":10,"height":10}),
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

    fn image(src: &str) -> CanvasOp {
        CanvasOp::Image(Image {
            id: "i".into(),
            src: src.into(),
            x: 0.0,
            y: 0.0,
            width: 1.0,
            height: 1.0,
            rotation: None,
        })
    }

    #[test]
    fn paths_that_a_browser_resolves_to_another_host_are_refused() {
        for src in [
            "//evil.example/x.png",
            "/\\evil.example/x.png",
            "/\t/evil.example/x.png",
            "/\r/evil.example/x.png",
            "/\n/evil.example/x.png",
            "/ /evil.example/x.png",
            "\t//evil.example/x.png",
            "/x.png\n",
            "/\u{0}x.png",
            "/\u{a0}/evil.example",
            "/",
            "\\\\evil.example/x.png",
        ] {
            let err = classify(src).expect_err(src);
            assert_eq!(err.code, ErrorCode::InvalidPayload, "{src:?}");
        }
        assert_eq!(classify("/a.png"), Ok(Source::SameOrigin));
        assert_eq!(classify("/a\\b.png"), Ok(Source::SameOrigin));
    }

    #[test]
    fn the_default_policy_allows_same_origin_and_raster_data_only() {
        let policy = ImagePolicy::default();
        assert_eq!(ImagePolicy::parse("self,data"), Ok(policy.clone()));
        for src in ["/uploads/a.png", "data:image/webp;base64,AAAA"] {
            assert_eq!(image(src).check_sources(&policy), Ok(()), "{src}");
        }
        let err = image("https://any.example/a.png")
            .check_sources(&policy)
            .expect_err("https is not in the default");
        assert_eq!(
            err.message,
            "delta.src is not an allowed image source (allowed: a /path, a png/jpeg/gif/webp data URL)"
        );
        // Ops other than images have no sources.
        assert_eq!(
            CanvasOp::Clear.check_sources(&ImagePolicy::parse("data").expect("ok")),
            Ok(())
        );
    }

    #[test]
    fn https_origins_match_host_and_port_exactly() {
        let policy = ImagePolicy::parse(" data , https://CDN.Example , https://img.example:8443/")
            .expect("valid");
        for src in [
            "https://cdn.example/a.png",
            "https://CDN.EXAMPLE/a.png",
            "https://cdn.example:443/a.png",
            "https://cdn.example?x",
            "https://img.example:8443/a.png",
            "data:image/png;base64,AAAA",
        ] {
            assert_eq!(image(src).check_sources(&policy), Ok(()), "{src}");
        }
        for src in [
            "https://cdn.example.evil/a.png",
            "https://evil.example/cdn.example/a.png",
            "https://cdn.example:8443/a.png",
            "https://img.example/a.png",
            "https://cdn.example@evil.example/a.png",
            "https://cdn.example\\@evil.example/a.png",
            "https://cdn.example%2eevil/a.png",
            "https://[::1]/a.png",
            "/a.png",
        ] {
            assert!(image(src).check_sources(&policy).is_err(), "{src}");
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        for text in [
            "",
            "self,",
            "http://cdn.example",
            "https://cdn.example/path",
            "https://user@cdn.example",
            "https://cdn.example:0",
            "https://cdn.example:99999",
            "https://",
            "everything",
        ] {
            assert!(ImagePolicy::parse(text).is_err(), "{text:?}");
        }
    }
}
