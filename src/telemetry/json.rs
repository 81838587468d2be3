//! A small JSON writer for `/status` and the admin API: objects, arrays,
//! strings, numbers. Output only (nothing here parses JSON), so it needs no
//! serialisation framework.
//!
//! Invariants: strings are escaped per RFC 8259 (quote, backslash, control
//! characters); numbers that are not finite are written as `null`.

use std::fmt::Write;

/// A JSON value being written: `Json::object()` or `Json::array()`, filled
/// with `field`/`item` calls, closed by `finish`.
pub struct Json {
    out: String,
    first: bool,
    close: char,
}

/// A value that can be written as JSON.
pub trait ToJson {
    fn write_json(&self, out: &mut String);
}

impl Json {
    pub fn object() -> Json {
        Json {
            out: "{".into(),
            first: true,
            close: '}',
        }
    }

    pub fn array() -> Json {
        Json {
            out: "[".into(),
            first: true,
            close: ']',
        }
    }

    fn separator(&mut self) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
    }

    /// Adds `"name": value` to an object.
    pub fn field(mut self, name: &str, value: impl ToJson) -> Json {
        self.separator();
        name.write_json(&mut self.out);
        self.out.push(':');
        value.write_json(&mut self.out);
        self
    }

    /// Adds a value to an array.
    pub fn item(mut self, value: impl ToJson) -> Json {
        self.separator();
        value.write_json(&mut self.out);
        self
    }

    /// The finished text.
    pub fn finish(mut self) -> String {
        self.out.push(self.close);
        self.out
    }
}

impl ToJson for Json {
    fn write_json(&self, out: &mut String) {
        out.push_str(&self.out);
        out.push(self.close);
    }
}

impl ToJson for &str {
    fn write_json(&self, out: &mut String) {
        out.push('"');
        for c in self.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

impl ToJson for &String {
    fn write_json(&self, out: &mut String) {
        self.as_str().write_json(out);
    }
}

impl ToJson for String {
    fn write_json(&self, out: &mut String) {
        self.as_str().write_json(out);
    }
}

impl ToJson for f64 {
    fn write_json(&self, out: &mut String) {
        if self.is_finite() {
            let _ = write!(out, "{self}");
        } else {
            out.push_str("null");
        }
    }
}

/// Integers are written as they print.
macro_rules! integer_to_json {
    ($($type:ty),*) => {$(
        impl ToJson for $type {
            fn write_json(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

integer_to_json!(u32, u64, i64, usize);

impl ToJson for bool {
    fn write_json(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn write_json(&self, out: &mut String) {
        match self {
            Some(value) => value.write_json(out),
            None => out.push_str("null"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_values_with_escapes() {
        let text = Json::object()
            .field("name", "a \"quoted\"\\ line\n\u{1}")
            .field("rate", 0.5)
            .field("nan", f64::NAN)
            .field("none", None::<u64>)
            .field("list", Json::array().item(1u64).item(true))
            .field("empty", Json::object())
            .finish();
        assert_eq!(
            text,
            r#"{"name":"a \"quoted\"\\ line\n\u0001","rate":0.5,"nan":null,"none":null,"list":[1,true],"empty":{}}"#
        );
    }
}
