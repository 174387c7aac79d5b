//! JSON-RPC 2.0 as SPDK speaks it: one request object or a batch array per top-level value,
//! each answer a JSON object (or an array for a batch) followed by "\n".

use serde_json::Value;

/// Parse error: the bytes are not JSON (the connection is closed after the answer).
pub const PARSE_ERROR: i32 = -32700;
/// Not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// Missing, unknown or ill-typed parameters.
pub const INVALID_PARAMS: i32 = -32602;
/// The server failed.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK's "invalid state" (a method only allowed before initialization).
pub const INVALID_STATE: i32 = -1;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC or SPDK (negative errno) code.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// -32602 with `message`.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// -32601 "Method not found", as SPDK words it.
    pub fn method_not_found() -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, "Method not found")
    }
}

/// What serves the methods.
pub trait Handler: Send + Sync {
    /// Runs `method` with `params` (`None` when absent or null).
    fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError>;
}

/// What to send back for one top-level value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes (one JSON value and "\n").
    Reply(Vec<u8>),
    /// Send nothing (a notification, or a batch of them).
    Nothing,
    /// Send these bytes, then close the connection (the stream cannot be resynchronized).
    ReplyAndClose(Vec<u8>),
}

fn error_object(id: &Value, e: &RpcError) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": e.code, "message": e.message },
    })
}

fn result_object(id: &Value, result: Value) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    out.push(b'\n');
    out
}

/// Handles one request object; `None` for a notification.
fn handle_one(req: &Value, h: &dyn Handler) -> Option<Value> {
    let invalid = |id: &Value| {
        Some(error_object(
            id,
            &RpcError::new(INVALID_REQUEST, "Invalid request"),
        ))
    };
    let Value::Object(obj) = req else {
        return invalid(&Value::Null);
    };
    let id = obj.get("id");
    let reply_id = match id {
        None => Value::Null,
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => v.clone(),
        Some(_) => return invalid(&Value::Null),
    };
    let bad = obj
        .keys()
        .any(|k| !matches!(k.as_str(), "jsonrpc" | "method" | "params" | "id"))
        || obj.get("jsonrpc").is_some_and(|v| v != "2.0");
    let method = match obj.get("method") {
        Some(Value::String(m)) if !bad => m.as_str(),
        _ => return invalid(&reply_id),
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return invalid(&reply_id),
    };
    let outcome = h.call(method, params);
    // JSON-RPC 2.0: a request without "id" is a notification and gets no answer at all.
    id?;
    Some(match outcome {
        Ok(result) => result_object(&reply_id, result),
        Err(e) => error_object(&reply_id, &e),
    })
}

/// Handles one complete top-level JSON value from the stream.
pub fn handle_frame(frame: &[u8], h: &dyn Handler) -> Outcome {
    let value: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => {
            let err = RpcError::new(PARSE_ERROR, format!("Parse error: {e}"));
            return Outcome::ReplyAndClose(line(&error_object(&Value::Null, &err)));
        }
    };
    match &value {
        Value::Array(items) if items.is_empty() => Outcome::Reply(line(&error_object(
            &Value::Null,
            &RpcError::new(INVALID_REQUEST, "Invalid request"),
        ))),
        Value::Array(items) => {
            let answers: Vec<Value> = items.iter().filter_map(|r| handle_one(r, h)).collect();
            if answers.is_empty() {
                Outcome::Nothing
            } else {
                Outcome::Reply(line(&Value::Array(answers)))
            }
        }
        other => match handle_one(other, h) {
            Some(answer) => Outcome::Reply(line(&answer)),
            None => Outcome::Nothing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Echoes params; "fail" fails; records every call.
    struct Echo(Mutex<Vec<String>>);

    impl Handler for Echo {
        fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
            self.0.lock().expect("lock").push(method.to_string());
            match method {
                "echo" => Ok(params.cloned().unwrap_or(Value::Bool(true))),
                "fail" => Err(RpcError::new(-19, "No such device")),
                _ => Err(RpcError::method_not_found()),
            }
        }
    }

    fn reply(o: Outcome) -> Value {
        match o {
            Outcome::Reply(b) | Outcome::ReplyAndClose(b) => {
                assert_eq!(b.last(), Some(&b'\n'), "answers end with a newline");
                serde_json::from_slice(&b).expect("answer is JSON")
            }
            Outcome::Nothing => Value::Null,
        }
    }

    #[test]
    fn requests_results_and_errors() {
        let h = Echo(Mutex::new(Vec::new()));
        let r = reply(handle_frame(
            br#"{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":7}"#,
            &h,
        ));
        assert_eq!(
            r,
            serde_json::json!({"jsonrpc":"2.0","id":7,"result":{"a":1}})
        );
        let r = reply(handle_frame(br#"{"method":"fail","id":"x"}"#, &h));
        assert_eq!(r["error"]["code"], -19);
        assert_eq!(r["id"], "x");
        let r = reply(handle_frame(br#"{"method":"nope","id":1}"#, &h));
        assert_eq!(r["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(r["error"]["message"], "Method not found");
        // id null is an id (answered with null), not a notification.
        let r = reply(handle_frame(br#"{"method":"echo","id":null}"#, &h));
        assert_eq!(r["result"], true);
    }

    #[test]
    fn invalid_requests() {
        let h = Echo(Mutex::new(Vec::new()));
        for bad in [
            &br#"{"jsonrpc":"1.0","method":"echo","id":1}"#[..],
            br#"{"method":5,"id":1}"#,
            br#"{"id":1}"#,
            br#"{"method":"echo","params":3,"id":1}"#,
            br#"{"method":"echo","id":[1]}"#,
            br#"{"method":"echo","id":1,"extra":0}"#,
            br#"42"#,
            br#"[]"#,
        ] {
            let r = reply(handle_frame(bad, &h));
            assert_eq!(
                r["error"]["code"],
                INVALID_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            h.0.lock().expect("lock").is_empty(),
            "nothing invalid is called"
        );
    }

    #[test]
    fn parse_errors_close_the_connection() {
        let h = Echo(Mutex::new(Vec::new()));
        match handle_frame(br#"{"method": "echo", "id": 1,}"#, &h) {
            Outcome::ReplyAndClose(b) => {
                let v: Value = serde_json::from_slice(&b).expect("json");
                assert_eq!(v["error"]["code"], PARSE_ERROR);
                assert_eq!(v["id"], Value::Null);
            }
            other => panic!("expected a parse error and close, got {other:?}"),
        }
    }

    #[test]
    fn notifications_and_batches() {
        let h = Echo(Mutex::new(Vec::new()));
        assert_eq!(handle_frame(br#"{"method":"echo"}"#, &h), Outcome::Nothing);
        assert_eq!(handle_frame(br#"{"method":"fail"}"#, &h), Outcome::Nothing);
        assert_eq!(
            handle_frame(br#"[{"method":"echo"},{"method":"fail"}]"#, &h),
            Outcome::Nothing
        );
        let r = reply(handle_frame(
            br#"[{"method":"echo","params":[1],"id":1},{"method":"echo"},{"method":"fail","id":2},5]"#,
            &h,
        ));
        let a = r.as_array().expect("batch answer is an array");
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["result"], serde_json::json!([1]));
        assert_eq!(a[1]["error"]["code"], -19);
        assert_eq!(a[2]["error"]["code"], INVALID_REQUEST);
        assert_eq!(
            *h.0.lock().expect("lock"),
            vec!["echo", "fail", "echo", "fail", "echo", "echo", "fail"],
            "notifications run too"
        );
    }
}
