//! A peer resource's ETag is its relay-side ICE ufrag, quoted (RFC 9725 §4.3).
//! This module turns a ufrag into the `ETag` header and reads `If-Match` back.

use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, HeaderValue};

use crate::network::ICE_RESTART;
use crate::problem::ApiError;

/// The `ETag` header for `ufrag`. A ufrag that cannot be a strong entity tag
/// (RFC 9110 §8.8.3: visible ASCII except `"`) is the network's fault: 500.
pub(crate) fn header(ufrag: &str) -> Result<HeaderValue, ApiError> {
    let bad = || {
        ApiError::Internal(format!(
            "the network answered with an ICE ufrag that cannot be an ETag: {ufrag:?}"
        ))
    };
    let etag_char = |b: u8| b.is_ascii_graphic() && b != b'"';
    if ufrag.is_empty() || !ufrag.bytes().all(etag_char) {
        return Err(bad());
    }
    HeaderValue::from_str(&format!("\"{ufrag}\"")).map_err(|_| bad())
}

/// The unquoted tag `If-Match` names: [`ICE_RESTART`] for `*`, else the ufrag.
/// Missing is a 428; anything but one strong entity tag or `*` is a 400.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(IF_MATCH).ok_or(ApiError::MissingIfMatch)?;
    let value = value.to_str().map_err(|_| ApiError::BadIfMatch)?.trim();
    if value == ICE_RESTART {
        return Ok(ICE_RESTART);
    }
    let tag = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or(ApiError::BadIfMatch)?;
    if tag.is_empty() || tag.contains('"') {
        return Err(ApiError::BadIfMatch);
    }
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn if_match_of(value: &str) -> Result<String, String> {
        let mut headers = HeaderMap::new();
        headers.insert(IF_MATCH, HeaderValue::from_str(value).unwrap());
        if_match(&headers)
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn if_match_names_one_quoted_tag_or_a_restart() {
        assert_eq!(if_match_of("\"abcd\""), Ok("abcd".to_owned()));
        assert_eq!(if_match_of(" \"abcd\" "), Ok("abcd".to_owned()));
        assert_eq!(if_match_of("*"), Ok("*".to_owned()));
        assert_eq!(if_match_of("\"*\""), Ok("*".to_owned()));
        for bad in ["abcd", "W/\"abcd\"", "\"a\", \"b\"", "\"\"", "\""] {
            assert!(if_match_of(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            if_match(&HeaderMap::new()),
            Err(ApiError::MissingIfMatch)
        ));
    }

    #[test]
    fn the_etag_is_the_quoted_ufrag() {
        assert_eq!(header("a+b/C9").unwrap(), "\"a+b/C9\"");
        for bad in ["", "a\"b", "a b", "é"] {
            assert!(header(bad).is_err(), "{bad}");
        }
    }
}
