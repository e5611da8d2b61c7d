//! The Solana pubsub protocol, as far as `programSubscribe` needs it.

use serde_json::{Value, json};
use solana_sources::Pubkey;
use solana_sources::rpc::{Account, Filter, decode_base64};

/// The `programSubscribe` request with `id`.
pub fn subscribe_request(id: u64, program: &Pubkey, filters: &[Filter]) -> String {
    let filters: Vec<Value> = filters.iter().map(Filter::to_json).collect();
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "programSubscribe",
        "params": [program.to_string(), {
            "encoding": "base64",
            "commitment": "confirmed",
            "filters": filters,
        }],
    })
    .to_string()
}

/// One server message, classified.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// The answer to a subscribe request: request id → subscription id.
    Subscribed {
        request: u64,
        subscription: u64,
    },
    /// A request refused by the node.
    Error {
        request: Option<u64>,
        message: String,
    },
    Notification(Notification),
    /// Anything else (e.g. an unsubscribe answer): ignored.
    Other,
}

#[derive(Debug, PartialEq)]
pub struct Notification {
    pub subscription: u64,
    pub slot: u64,
    pub pubkey: Pubkey,
    pub account: Account,
}

/// Parses one text frame; `Err` names what was malformed.
pub fn parse(text: &str) -> Result<Message, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    if v.get("method").and_then(Value::as_str) == Some("programNotification") {
        return parse_notification(&v["params"]).map(Message::Notification);
    }
    let request = v.get("id").and_then(Value::as_u64);
    if let Some(err) = v.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_owned();
        return Ok(Message::Error { request, message });
    }
    match (request, v.get("result").and_then(Value::as_u64)) {
        (Some(request), Some(subscription)) => Ok(Message::Subscribed {
            request,
            subscription,
        }),
        _ => Ok(Message::Other),
    }
}

fn parse_notification(params: &Value) -> Result<Notification, String> {
    let subscription = params
        .get("subscription")
        .and_then(Value::as_u64)
        .ok_or("notification without subscription")?;
    let result = params.get("result").ok_or("notification without result")?;
    let slot = result
        .pointer("/context/slot")
        .and_then(Value::as_u64)
        .ok_or("notification without context.slot")?;
    let value = result.get("value").ok_or("notification without value")?;
    let pubkey: Pubkey = value
        .get("pubkey")
        .and_then(Value::as_str)
        .ok_or("notification without pubkey")?
        .parse()
        .map_err(|e| format!("bad pubkey: {e}"))?;
    let account = value.get("account").ok_or("notification without account")?;
    let owner: Pubkey = account
        .get("owner")
        .and_then(Value::as_str)
        .ok_or("account without owner")?
        .parse()
        .map_err(|e| format!("bad owner: {e}"))?;
    let lamports = account
        .get("lamports")
        .and_then(Value::as_u64)
        .ok_or("account without lamports")?;
    let data = match account.get("data") {
        Some(Value::Array(pair)) => match (pair.first(), pair.get(1)) {
            (Some(Value::String(text)), Some(Value::String(enc))) if enc == "base64" => {
                decode_base64(text)?
            }
            _ => return Err("account data is not [<base64>, \"base64\"]".into()),
        },
        _ => return Err("account without data".into()),
    };
    let executable = account
        .get("executable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Notification {
        subscription,
        slot,
        pubkey,
        account: Account {
            lamports,
            owner,
            data,
            executable,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_shapes() {
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","result":7,"id":1}"#),
            Ok(Message::Subscribed {
                request: 1,
                subscription: 7
            })
        );
        let k = Pubkey([3; 32]);
        let text = format!(
            r#"{{"jsonrpc":"2.0","method":"programNotification","params":{{"subscription":7,"result":{{"context":{{"slot":9}},"value":{{"pubkey":"{k}","account":{{"data":["AQI=","base64"],"owner":"{k}","lamports":5,"executable":false,"rentEpoch":0,"space":2}}}}}}}}}}"#
        );
        let Ok(Message::Notification(n)) = parse(&text) else {
            panic!("not a notification")
        };
        assert_eq!((n.subscription, n.slot, n.account.data), (7, 9, vec![1, 2]));
        assert!(parse("{").is_err());
        assert!(parse(r#"{"method":"programNotification","params":{"subscription":1}}"#).is_err());
    }
}
