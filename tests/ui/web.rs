//! A small browser without JavaScript: reqwest with its own cookie jar and no automatic
//! redirects (so tests see each 303), and the pages' tables and forms read with `scraper`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, ACCEPT_LANGUAGE, COOKIE, LOCATION, SET_COOKIE};
use scraper::{ElementRef, Html, Selector};
use tollgate::billing::money::Usd;

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "initial-admin-pass";

pub struct Web {
    pub base: String,
    http: reqwest::Client,
    jar: Mutex<BTreeMap<String, String>>,
    /// Sent as `Accept-Language` when set.
    pub accept_language: Option<String>,
    /// Sent as `X-Forwarded-For` when set (a client behind a trusted proxy).
    pub forwarded_for: Option<String>,
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
            forwarded_for: None,
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
        if let Some(f) = &self.forwarded_for {
            req = req.header("x-forwarded-for", f);
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

/// The first element matching `css` for which `f` gives a value.
fn find_map<T>(html: &str, css: &str, f: impl FnMut(ElementRef<'_>) -> Option<T>) -> Option<T> {
    let doc = Html::parse_document(html);
    let sel = Selector::parse(css).unwrap_or_else(|e| panic!("bad selector {css:?}: {e}"));
    let found = doc.select(&sel).find_map(f);
    found
}

/// An element's text, tags removed, entities decoded, trimmed.
fn text_of(e: ElementRef<'_>) -> String {
    e.text().collect::<String>().trim().to_string()
}

/// The value of the first `<input name="{name}">`.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    find_map(html, "input[name]", |e| {
        (e.value().attr("name") == Some(name))
            .then(|| e.value().attr("value").unwrap_or_default().to_string())
    })
}

/// Attribute `name` of the element with `id="{id}"`.
pub fn attr_by_id(html: &str, id: &str, name: &str) -> Option<String> {
    find_map(html, "[id]", |e| {
        (e.value().id() == Some(id)).then(|| e.value().attr(name).map(str::to_string))
    })
    .flatten()
}

/// The text of the element with `id="{id}"`.
pub fn text_by_id(html: &str, id: &str) -> Option<String> {
    find_map(html, "[id]", |e| {
        (e.value().id() == Some(id)).then(|| text_of(e))
    })
}

pub fn meta(html: &str, name: &str) -> Option<String> {
    find_map(html, "meta[name]", |e| {
        (e.value().attr("name") == Some(name))
            .then(|| e.value().attr("content").map(str::to_string))
    })
    .flatten()
}

/// The rows of a table body that carry `data-{key}="…"`: (that value, cells by `data-col`).
pub fn rows(html: &str, key: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let doc = Html::parse_document(html);
    let attr = format!("data-{key}");
    let sel = Selector::parse(&format!("tr[{attr}]")).unwrap();
    let rows = doc
        .select(&sel)
        .map(|row| {
            let id = row.value().attr(&attr).unwrap_or_default().to_string();
            let cells = row
                .child_elements()
                .filter(|c| c.value().name() == "td")
                .filter_map(|c| Some((c.value().attr("data-col")?.to_string(), text_of(c))))
                .collect();
            (id, cells)
        })
        .collect();
    rows
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
