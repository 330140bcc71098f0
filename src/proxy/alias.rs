//! Model aliases (SPEC §11.2): an account's `model_map` sends the client's model name upstream
//! as the account's own, and every `model` member of the answer carries the client's name
//! again. Only used when an alias applies, so requests without one pay nothing.
//!
//! The rewrite is a byte scan, not a parse and re-serialisation: everything but the `model`
//! values goes out byte for byte (key order, spacing, numbers), and one pass over an event is
//! cheaper than building its JSON tree.

/// The deepest nesting at which an answer's `model` members are rewritten: 1 is the body's
/// own (`chat.completion`, a `message`, a `response`, a chat chunk), 2 the object an event
/// wraps (`message_start.message`, `response.created.response`). Deeper members belong to
/// content (a tool's input object) and are left alone.
pub const ANSWER_DEPTH: u32 = 2;

/// `json` with the string value of every `"model"` member at nesting depth 1 to `max_depth`
/// replaced by `name`; None when there is no such member (nothing to change). Input that is
/// not JSON (an SSE `event:` line, `[DONE]`) passes through the scan untouched.
pub fn rename_model(json: &[u8], name: &str, max_depth: u32) -> Option<Vec<u8>> {
    memchr::memmem::find(json, b"\"model\"")?;
    let mut out: Option<Vec<u8>> = None;
    // `json[..copied]` is already in `out`.
    let mut copied = 0;
    let mut depth = 0u32;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                let end = string_end(json, i + 1);
                let is_model = (1..=max_depth).contains(&depth) && &json[i..end] == b"\"model\"";
                i = end;
                if !is_model {
                    continue;
                }
                let colon = skip_ws(json, i);
                if json.get(colon) != Some(&b':') {
                    continue; // a string value "model", not a member name
                }
                let value = skip_ws(json, colon + 1);
                if json.get(value) != Some(&b'"') {
                    continue; // null or another type: not a name to hide
                }
                let value_end = string_end(json, value + 1);
                let o = out.get_or_insert_with(|| Vec::with_capacity(json.len() + name.len()));
                o.extend_from_slice(&json[copied..value]);
                o.extend_from_slice(&quoted(name));
                copied = value_end;
                i = value_end;
            }
            _ => i += 1,
        }
    }
    out.map(|mut o| {
        o.extend_from_slice(&json[copied..]);
        o
    })
}

/// The index just past the closing quote of the string whose body starts at `from` (the end
/// of `s` if it is unterminated).
fn string_end(s: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// `name` as a JSON string.
fn quoted(name: &str) -> Vec<u8> {
    serde_json::to_vec(name).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(json: &str, depth: u32) -> Option<String> {
        rename_model(json.as_bytes(), "client-name", depth).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn model_members_near_the_top_are_renamed_and_nothing_else_changes() {
        assert_eq!(
            renamed(r#"{"id":"x","model":"up-1","n":1.50}"#, 2).as_deref(),
            Some(r#"{"id":"x","model":"client-name","n":1.50}"#)
        );
        // Spacing kept; an event line before the data is left alone.
        assert_eq!(
            renamed(
                "event: message_start\ndata: {\"message\": {\"model\" : \"up-1\", \"id\":\"m\"}}\n\n",
                2
            )
            .as_deref(),
            Some("event: message_start\ndata: {\"message\": {\"model\" : \"client-name\", \"id\":\"m\"}}\n\n")
        );
        // A tool's input deeper down, a string value "model", escaped text: untouched.
        let deep = r#"{"content":[{"type":"tool_use","input":{"model":"keep"}}],"type":"model","text":"say \"model\":\"x\""}"#;
        assert_eq!(renamed(deep, 2), None);
        // Depth 1 only (the request body): the top-level member, not a nested one.
        assert_eq!(
            renamed(r#"{"response":{"model":"a"},"model":"b"}"#, 1).as_deref(),
            Some(r#"{"response":{"model":"a"},"model":"client-name"}"#)
        );
        // No model member, or a null one: nothing to change.
        assert_eq!(renamed(r#"{"choices":[]}"#, 2), None);
        assert_eq!(renamed(r#"{"model":null}"#, 2), None);
        assert_eq!(renamed("data: [DONE]\n\n", 2), None);
    }

    #[test]
    fn a_name_that_needs_escaping_is_written_as_a_json_string() {
        let out = rename_model(br#"{"model":"u"}"#, "a\"b", 1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "a\"b");
    }
}
