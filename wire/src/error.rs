//! What is wrong with a message someone sent.

use thiserror::Error;

/// A control message or status record that cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not JSON at all, or not a JSON object.
    #[error("{what}: not a JSON object: {detail}")]
    NotJson {
        /// Which protocol (`zygote request`, `zygote event`, `status record`).
        what: &'static str,
        /// What the JSON reader said.
        detail: String,
    },
    /// Written for another version of the protocol.
    #[error("{what}: field `v`: protocol version {got}, this nodecell speaks {want}")]
    Version {
        /// Which protocol.
        what: &'static str,
        /// The version in the message (0 when absent or not a number).
        got: u64,
        /// The version this build speaks.
        want: u32,
    },
    /// A field is missing, unknown or of the wrong type.
    #[error("{what}: field `{field}`: {detail}")]
    Field {
        /// Which protocol.
        what: &'static str,
        /// The field's path (`op`, `pack.env.HOME`, `walls[3].state`; `.` for the message itself).
        field: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// Reads `value` as a `T`, naming the field of any mistake.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    what: &'static str,
    value: serde_json::Value,
) -> Result<T, WireError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names a missing or unknown field in its message ("missing field `wid`"),
        // with the path of the object that lacks it: report the field itself.
        let (field, detail) = match field_in(&inner) {
            Some(name) if path == "." => (name.to_string(), inner.clone()),
            Some(name) if path == name || path.ends_with(&format!(".{name}")) => {
                (path, inner.clone())
            }
            Some(name) => (format!("{path}.{name}"), inner.clone()),
            None => (path, inner),
        };
        WireError::Field {
            what,
            field,
            detail,
        }
    })
}

/// The field a serde message about a missing/unknown field names.
fn field_in(msg: &str) -> Option<&str> {
    let rest = msg
        .strip_prefix("missing field `")
        .or_else(|| msg.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

/// Parses `bytes` as one JSON object.
pub(crate) fn object(
    what: &'static str,
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, WireError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(WireError::NotJson {
            what,
            detail: format!("got {}", kind_of(&other)),
        }),
        Err(e) => Err(WireError::NotJson {
            what,
            detail: e.to_string(),
        }),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
