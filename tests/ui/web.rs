//! A small browser without JavaScript: reqwest with its own cookie jar and no automatic
//! redirects (so tests see each 303), plus just enough HTML reading for the pages' tables and
//! forms.

use std::collections::BTreeMap;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, ACCEPT_LANGUAGE, COOKIE, LOCATION, SET_COOKIE};
use tollgate::billing::money::Usd;

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "initial-admin-pass";

pub struct Web {
    pub base: String,
    http: reqwest::Client,
    jar: Mutex<BTreeMap<String, String>>,
    /// Sent as `Accept-Language` when set.
    pub accept_language: Option<String>,
}

pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Web {
    pub fn new(base: &str) -> Web {
        Web::from_address(base, None)
    }

    /// A client whose connections come from `local` (any 127.x.y.z works on loopback), to
    /// look like different client addresses.
    pub fn from_address(base: &str, local: Option<std::net::IpAddr>) -> Web {
        Web {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(local)
                .build()
                .unwrap(),
            jar: Mutex::new(BTreeMap::new()),
            accept_language: None,
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar
            .lock()
            .unwrap()
            .insert(name.to_string(), value.to_string());
    }

    pub fn forget_cookie(&self, name: &str) {
        self.jar.lock().unwrap().remove(name);
    }

    fn cookie_header(&self) -> String {
        self.jar
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let mut req = req.header(COOKIE, self.cookie_header());
        if let Some(l) = &self.accept_language {
            req = req.header(ACCEPT_LANGUAGE, l);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for c in headers.get_all(SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            let gone = attrs.to_ascii_lowercase().contains("max-age=0");
            let mut jar = self.jar.lock().unwrap();
            if gone {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let body = resp.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(self.http.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// POST a form with this session's CSRF token added.
    pub async fn submit(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let csrf = self.csrf().await;
        let mut all: Vec<(&str, &str)> = form.to_vec();
        all.push(("csrf", &csrf));
        self.post(path, &all).await
    }

    /// The session's CSRF token, from a page's `<meta name="csrf-token">`.
    pub async fn csrf(&self) -> String {
        let p = self.get("/admin/packages").await;
        assert_eq!(p.status, 200, "{}", p.body);
        meta(&p.body, "csrf-token").expect("csrf meta tag")
    }

    /// Sign in through the form; returns the response to the form's POST.
    pub async fn try_login(&self, user: &str, password: &str) -> Page {
        let form = self.get("/admin/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = input_value(&form.body, "csrf").expect("login csrf field");
        self.post(
            "/admin/login",
            &[("username", user), ("password", password), ("csrf", &csrf)],
        )
        .await
    }

    pub async fn login(&self) {
        let r = self.try_login(ADMIN_USER, ADMIN_PASSWORD).await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert!(self.cookie("tollgate_session").is_some());
    }
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// Undo askama's escaping (and the few named entities).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &tail[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => ent
                    .strip_prefix('#')
                    .and_then(|n| n.parse::<u32>().ok())
                    .and_then(char::from_u32),
            }?;
            Some((c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &tail[e + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text of an element's inner HTML with tags removed, unescaped and trimmed.
pub fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(out.trim())
}

/// The value of attribute `name` in a start tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let i = tag.find(&needle)? + needle.len();
    let end = tag[i..].find('"')?;
    Some(unescape(&tag[i..i + end]))
}

/// Every start tag `<{tag} …>` in the document.
fn tags<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    html.match_indices(&open)
        .filter_map(|(i, _)| {
            let t = &html[i..];
            let next = t[open.len()..].chars().next()?;
            if !(next.is_whitespace() || next == '>') {
                return None;
            }
            Some(&t[..t.find('>')? + 1])
        })
        .collect()
}

/// The value of the first `<input name="{name}">`.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    tags(html, "input")
        .into_iter()
        .find(|t| attr(t, "name").as_deref() == Some(name))
        .map(|t| attr(t, "value").unwrap_or_default())
}

/// Attribute `name` of the element with `id="{id}"`.
pub fn attr_by_id(html: &str, id: &str, name: &str) -> Option<String> {
    let i = html.find(&format!(" id=\"{id}\""))?;
    let start = html[..i].rfind('<')?;
    let end = i + html[i..].find('>')?;
    attr(&html[start..=end], name)
}

pub fn meta(html: &str, name: &str) -> Option<String> {
    tags(html, "meta")
        .into_iter()
        .find(|t| attr(t, "name").as_deref() == Some(name))
        .and_then(|t| attr(t, "content"))
}

/// The rows of a table body that carry `data-{key}="…"`: (that value, cells by `data-col`).
pub fn rows(html: &str, key: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    let open = format!("<tr data-{key}=\"");
    for (i, _) in html.match_indices(&open) {
        let row = &html[i..];
        let row = &row[..row.find("</tr>").unwrap()];
        let id = attr(&row[..row.find('>').unwrap()], &format!("data-{key}")).unwrap();
        let mut cells = BTreeMap::new();
        for (j, _) in row.match_indices("<td") {
            let cell = &row[j..];
            let start = cell.find('>').unwrap();
            let col = attr(&cell[..start + 1], "data-col");
            let inner = &cell[start + 1..cell.find("</td>").unwrap()];
            if let Some(col) = col {
                cells.insert(col, text(inner));
            }
        }
        out.push((id, cells));
    }
    out
}

/// A money cell (`$1,234.50`, `-$0.00011`) as nano-dollars; `—` as None.
pub fn money(cell: &str) -> Option<Usd> {
    if cell == "—" {
        return None;
    }
    let neg = cell.starts_with('-');
    let digits: String = cell
        .chars()
        .filter(|c| *c != '$' && *c != ',' && *c != '-')
        .collect();
    let v: Usd = digits
        .parse()
        .unwrap_or_else(|_| panic!("not money: {cell:?}"));
    Some(if neg { Usd(-v.0) } else { v })
}

/// The API's money string (or null) as nano-dollars.
pub fn api_money(v: &serde_json::Value) -> Option<Usd> {
    v.as_str().map(|s| s.parse().unwrap())
}
