//! Session names (PROTOCOL §1): 1 to 128 characters of `[A-Za-z0-9._-]`.
//! Signal refuses anything else with a 400; the browser peer checks before
//! it asks, so the rule lives here once.

/// The longest session name, in characters.
pub const SESSION_MAX: usize = 128;

/// Whether `name` follows the session name rules.
pub fn is_valid_session(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !name.is_empty() && name.len() <= SESSION_MAX && name.chars().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_follow_the_protocol_rules() {
        for good in ["a", "Doc-1.v2_x", &"z".repeat(128)] {
            assert!(is_valid_session(good), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a%2F", &"z".repeat(129)] {
            assert!(!is_valid_session(bad), "{bad}");
        }
    }
}
