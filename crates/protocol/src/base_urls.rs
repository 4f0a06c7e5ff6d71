//! The registry's base URLs as a client is given them (one, or a comma-separated list of
//! replicas), validated once, and the two rules that decide where a request may go: which
//! URLs count as configured (the only ones a token is ever sent to) and how long one try
//! may take when several URLs share one call's time.

use std::time::Duration;

use reqwest::Url;

/// One configured registry URL.
#[derive(Debug, Clone)]
pub(crate) struct BaseUrl {
    /// As given, without a trailing `/`: request paths are appended to it.
    pub text: String,
    /// Parsed, for its origin (scheme, host, port), to recognise a redirect to it; `None`
    /// only for a URL that does not parse, which the lenient `with_http_client` keeps so that
    /// its requests fail as they always did (and no redirect can ever lead to it).
    pub parsed: Option<Url>,
}

impl BaseUrl {
    pub(crate) fn new(text: &str) -> BaseUrl {
        let text = text.trim().trim_end_matches('/').to_string();
        let parsed = Url::parse(&text).ok().filter(|url| url.has_host());
        BaseUrl { text, parsed }
    }

    /// True when `url` has this base's scheme, host and port (the default port of the
    /// scheme when none is written).
    pub(crate) fn same_origin(&self, url: &Url) -> bool {
        self.parsed
            .as_ref()
            .is_some_and(|parsed| parsed.origin() == url.origin())
    }
}

/// Splits a comma-separated list of registry URLs (`http://r1:7400,http://r2:7400`) and
/// validates it with [`check_base_urls`]. White space around an entry is ignored.
pub fn parse_base_urls(list: &str) -> Result<Vec<String>, String> {
    check_base_urls(list.split(',').map(str::to_string).collect())
}

/// Each URL must be `http://` or `https://` with a host; none may be empty, and none may
/// name the same URL as another (`http://r:80/` and `http://r` are the same): a duplicate
/// is a typo that would make fail over try one replica twice and another never. Returns the
/// URLs trimmed of white space and of a trailing `/`, in the order given.
pub fn check_base_urls(urls: Vec<String>) -> Result<Vec<String>, String> {
    if urls.is_empty() {
        return Err("no registry URL given".into());
    }
    let mut checked: Vec<(String, String)> = Vec::with_capacity(urls.len());
    for url in &urls {
        let given = url.trim();
        if given.is_empty() {
            return Err(format!(
                "{:?} has an empty entry: give one URL, or several separated by commas",
                urls.join(",")
            ));
        }
        if !(given.starts_with("http://") || given.starts_with("https://")) {
            return Err(format!("{given:?} must start with http:// or https://"));
        }
        let parsed = Url::parse(given).map_err(|e| format!("{given:?} is not a URL: {e}"))?;
        let text = given.trim_end_matches('/');
        if !parsed.has_host() || parsed.host_str().is_some_and(str::is_empty) {
            return Err(format!("{text:?} names no host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!(
                "{text:?} must not have a query or a fragment: request paths are appended to it"
            ));
        }
        let normalised = parsed.as_str().trim_end_matches('/').to_string();
        if let Some((first, _)) = checked.iter().find(|(_, n)| *n == normalised) {
            return Err(format!(
                "{first:?} and {given:?} are the same registry URL: list each replica once"
            ));
        }
        checked.push((text.to_string(), normalised));
    }
    Ok(checked.into_iter().map(|(text, _)| text).collect())
}

/// The time one try may take when `untried` URLs (this one included) share what is `left` of
/// the call's budget: an equal share, so that a call that has to try every URL still ends
/// within its budget. A URL that fails at once (a dead replica refuses the connection) leaves
/// its share to the ones after it.
pub(crate) fn try_timeout(left: Duration, untried: usize) -> Duration {
    let untried = u32::try_from(untried.max(1)).unwrap_or(u32::MAX);
    left / untried
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_trimmed_and_kept_in_order() {
        let urls = parse_base_urls(" http://r1:7400/ ,https://r2.example:7443,http://[::1]:7400")
            .expect("valid");
        assert_eq!(
            urls,
            [
                "http://r1:7400",
                "https://r2.example:7443",
                "http://[::1]:7400"
            ]
        );
        assert_eq!(
            parse_base_urls("http://r:7400").expect("one"),
            ["http://r:7400"]
        );
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for (list, reason) in [
            ("", "empty entry"),
            ("http://a,,http://b", "empty entry"),
            ("http://a,", "empty entry"),
            ("r:7400", "must start with http:// or https://"),
            ("http://a,ftp://b", "must start with http:// or https://"),
            ("http://", "not a URL"),
            ("http://a:99999", "not a URL"),
            ("http://a?x=1", "query"),
            ("http://a,http://b,http://a/", "same registry URL"),
            ("http://a:80,http://A", "same registry URL"),
            ("https://a:443,https://a", "same registry URL"),
        ] {
            let error = parse_base_urls(list).expect_err(list);
            assert!(error.contains(reason), "{list:?}: {error}");
        }
        assert!(check_base_urls(vec![]).is_err());
    }

    #[test]
    fn the_same_origin_means_scheme_host_and_port() {
        let base = BaseUrl::new("http://r1:7400/");
        assert_eq!(base.text, "http://r1:7400");
        let url = |s: &str| Url::parse(s).expect("url");
        assert!(base.same_origin(&url("http://r1:7400/v1/clusters?x=1")));
        assert!(!base.same_origin(&url("https://r1:7400/")));
        assert!(!base.same_origin(&url("http://r1:7401/")));
        assert!(!base.same_origin(&url("http://r2:7400/")));
        let default_port = BaseUrl::new("http://r1");
        assert!(default_port.same_origin(&url("http://r1:80/health")));
        assert!(!BaseUrl::new("not a url").same_origin(&url("http://r1/")));
    }

    #[test]
    fn tries_share_what_is_left_of_the_budget() {
        let second = Duration::from_secs(1);
        assert_eq!(try_timeout(6 * second, 3), 2 * second);
        // The first URL refused at once: the two left share all of it.
        assert_eq!(try_timeout(6 * second, 2), 3 * second);
        assert_eq!(try_timeout(6 * second, 1), 6 * second);
        assert_eq!(try_timeout(6 * second, 0), 6 * second);
    }
}
