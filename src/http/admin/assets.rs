//! The UI's static files, embedded in the binary and served from `/static/{path}`. Pages link
//! them with `?v={content hash}`, so a versioned URL may be cached for a year; an ETag covers
//! the rest.

use std::sync::LazyLock;

use axum::extract::{Path, RawQuery};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "admin.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../static/admin.css"),
    },
    Asset {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../static/admin.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../static/favicon.svg"),
    },
];

/// Each asset's content hash (16 hex digits of its SHA-256), in `ASSETS` order.
static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    ASSETS
        .iter()
        .map(|a| hex::encode(&Sha256::digest(a.body)[..8]))
        .collect()
});

fn find(name: &str) -> Option<(&'static Asset, &'static str)> {
    ASSETS
        .iter()
        .zip(VERSIONS.iter())
        .find(|(a, _)| a.name == name)
        .map(|(a, v)| (a, v.as_str()))
}

/// The versioned URL of an asset, for templates.
pub fn url(name: &str) -> String {
    match find(name) {
        Some((a, v)) => format!("/static/{}?v={v}", a.name),
        None => format!("/static/{name}"),
    }
}

pub async fn serve(
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some((asset, version)) = find(&path) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let etag = format!("\"{version}\"");
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    let versioned = query.is_some_and(|q| q == format!("v={version}"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if versioned {
            "public, max-age=31536000, immutable"
        } else {
            "public, max-age=300"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    (h, asset.body).into_response()
}
