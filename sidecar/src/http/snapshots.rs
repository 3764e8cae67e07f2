//! `/v1/groups/<g>/snapshots`: making one (admin), the newest manifest,
//! and the data in byte ranges so a broken download resumes.

use super::call::{get_only, json, Answer, Call, Reply};
use crate::auth::Role;
use crate::error::ApiError;
use hyper::header::RANGE;
use hyper::{Method, StatusCode};

pub async fn make(call: &Call, id: &str) -> Answer {
    if call.method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let g = call.group(id, Role::Admin).await?;
    let (w, g2) = (call.w.clone(), g.clone());
    json(
        StatusCode::CREATED,
        &call.group_work(&g, move || w.snapshot_now(&g2)).await?,
    )
}

pub async fn latest(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Reader).await?;
    let dir = call.w.snapshots_dir(&g);
    match call.read(&g, move || crate::snapshot::latest(&dir)).await? {
        Some(m) => json(StatusCode::OK, &m),
        None => Err(ApiError::NotFound("the group has no snapshot yet".into())),
    }
}

/// One byte range (`Range: bytes=a-` or `bytes=a-b`; at most 8 MiB per
/// answer, so a download resumes where it stopped).
pub async fn data(call: &Call, id: &str, seq: u64) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Reader).await?;
    let (start, end) = match call.header(RANGE) {
        None => (0, None),
        Some(v) => {
            let bad =
                || ApiError::BadRequest("Range must be 'bytes=START-' or 'bytes=START-END'".into());
            let spec = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("bytes="))
                .ok_or_else(bad)?;
            let (a, b) = spec.split_once('-').ok_or_else(bad)?;
            let start: u64 = a.parse().map_err(|_| bad())?;
            let end: Option<u64> = if b.is_empty() {
                None
            } else {
                Some(b.parse().map_err(|_| bad())?)
            };
            (start, end)
        }
    };
    let dir = call.w.snapshots_dir(&g);
    let (body, start, end, size) = call
        .read(&g, move || {
            crate::snapshot::read_range(&dir, seq, start, end)
        })
        .await?;
    Ok(Reply::Range {
        body,
        start,
        end,
        size,
    })
}
