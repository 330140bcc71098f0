//! Tests against a fake on loopback: shared helpers here, cases by area.

mod anthropic;
mod behaviours;
mod openai;
mod server;

use super::*;
use serde_json::json;

use std::time::Instant;

struct Event {
    name: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

fn parse_sse(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut ev = Event {
                name: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    ev.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    ev.data.push_str(data);
                } else {
                    panic!("unexpected SSE line {line:?} in {text:?}");
                }
            }
            ev
        })
        .collect()
}

async fn post(url: String, headers: &[(&str, &str)], body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(&body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request reaches the fake")
}

async fn wait_until(what: impl Fn() -> bool) -> bool {
    for _ in 0..250 {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    what()
}

const TOKENS: [(&str, &str); 4] = [
    ("x-fake-prompt-tokens", "100"),
    ("x-fake-completion-tokens", "20"),
    ("x-fake-cached-tokens", "30"),
    ("x-fake-cache-write-tokens", "40"),
];
