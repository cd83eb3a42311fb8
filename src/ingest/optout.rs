//! Publishers' opt-outs from AI use, read before an image is requested and from its response headers:
//! robots.txt (RFC 9309, for pixforge's product token or `*`), the TDM Reservation Protocol (the
//! `/.well-known/tdmrep.json` file and the `tdm-reservation` header, the EU text-and-data-mining
//! opt-out) and `X-Robots-Tag` directives.

use reqwest::header::HeaderMap;

/// The product token robots.txt groups and `X-Robots-Tag` directives address pixforge by.
pub const PRODUCT_TOKEN: &str = "pixforge";

/// The `X-Robots-Tag` directives that forbid using an image (img2dataset's defaults and `noml`).
pub const DISALLOWED_DIRECTIVES: &[&str] = &["noai", "noimageai", "noml", "noindex", "noimageindex"];

/// Bytes of a robots.txt or tdmrep.json file read; the rest is ignored (RFC 9309 asks crawlers to
/// parse at least 500 KiB).
pub const MAX_POLICY_BYTES: usize = 500 << 10;

/// Whether `X-Robots-Tag` headers forbid AI use for our user agent (img2dataset's parsing: an optional
/// `agent:` prefix, then comma-separated directives); returns the directive.
pub fn x_robots_tag_disallowed(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all("x-robots-tag") {
        let Ok(v) = value.to_str() else { continue };
        let (agent, directives) = match v.split_once(':') {
            Some((a, d)) if !a.contains(',') => (Some(a.trim().to_ascii_lowercase()), d),
            _ => (None, v),
        };
        if agent.as_deref().is_some_and(|a| a != PRODUCT_TOKEN) {
            continue;
        }
        for d in directives.split(',') {
            let d = d.trim().to_ascii_lowercase();
            if DISALLOWED_DIRECTIVES.contains(&d.as_str()) {
                return Some(d);
            }
        }
    }
    None
}

/// Whether the response reserves text-and-data-mining rights (`tdm-reservation: 1`); returns the
/// `tdm-policy` URL when one is given (empty otherwise).
pub fn tdm_header_reserved(headers: &HeaderMap) -> Option<String> {
    let reserved = headers.get_all("tdm-reservation").iter().any(|v| v.to_str().is_ok_and(|s| s.trim() == "1"));
    reserved.then(|| headers.get("tdm-policy").and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_string())
}

/// One `Allow` or `Disallow` line of the group that applies to pixforge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotsRule {
    /// `true` for `Allow`.
    pub allow: bool,
    /// The path pattern, percent-encoded (`*` any run of characters, a final `$` the end).
    pub pattern: String,
}

impl std::fmt::Display for RobotsRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", if self.allow { "Allow" } else { "Disallow" }, self.pattern)
    }
}

/// The rules of a robots.txt that apply to pixforge: the groups naming its product token, or else
/// the `*` groups (RFC 9309 section 2.2.1), merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RobotsTxt {
    /// The applicable rules, in file order.
    pub rules: Vec<RobotsRule>,
    /// Whether they come from a group naming `pixforge` (else from `*`).
    pub for_pixforge: bool,
}

impl RobotsTxt {
    /// Parses a robots.txt body (lenient as RFC 9309 asks: unknown lines and rules outside a group are
    /// ignored, `:` may be surrounded by spaces, keys are case-insensitive).
    pub fn parse(body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        let mut ours = Vec::new();
        let mut star = Vec::new();
        let (mut group_ours, mut group_star) = (false, false);
        let mut in_agents = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else { continue };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            match key.as_str() {
                "user-agent" => {
                    if !in_agents {
                        (group_ours, group_star) = (false, false);
                        in_agents = true;
                    }
                    let token = value.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("");
                    group_ours |= token.eq_ignore_ascii_case(PRODUCT_TOKEN);
                    group_star |= token == "*";
                }
                "allow" | "disallow" => {
                    in_agents = false;
                    if value.is_empty() {
                        continue;
                    }
                    let rule = RobotsRule { allow: key == "allow", pattern: encode_pattern(value) };
                    if group_ours {
                        ours.push(rule.clone());
                    }
                    if group_star {
                        star.push(rule);
                    }
                }
                _ => {}
            }
        }
        let for_pixforge = !ours.is_empty() || mentions_token(&text);
        Self { rules: if for_pixforge { ours } else { star }, for_pixforge }
    }

    /// The rule that forbids `path` (the URL's path and query, percent-encoded), if any: the longest
    /// matching pattern decides, an `Allow` winning a tie.
    pub fn disallowing(&self, path: &str) -> Option<&RobotsRule> {
        let mut best: Option<&RobotsRule> = None;
        for rule in &self.rules {
            if !pattern_matches(&rule.pattern, path) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => rule.pattern.len() > b.pattern.len() || rule.pattern.len() == b.pattern.len() && rule.allow,
            };
            if better {
                best = Some(rule);
            }
        }
        best.filter(|r| !r.allow)
    }
}

/// Whether a `User-agent` line names pixforge (a group for it with no rules still overrides `*`).
fn mentions_token(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        line.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("user-agent")
                && v.trim()
                    .split(|c: char| c.is_whitespace() || c == '/')
                    .next()
                    .is_some_and(|t| t.eq_ignore_ascii_case(PRODUCT_TOKEN))
        })
    })
}

/// Percent-encodes the bytes of a pattern that a URL would carry encoded (non-ASCII, controls,
/// spaces), so that patterns and URL paths compare as octets.
fn encode_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for b in pattern.bytes() {
        if b.is_ascii_graphic() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `path` matches a robots.txt / tdmrep path pattern: anchored at the start, `*` matching
/// any run of characters, a final `$` anchoring the end.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = path.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return !anchored || rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last && anchored {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// One rule of a `/.well-known/tdmrep.json` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TdmRule {
    /// The path pattern the rule covers (robots.txt syntax).
    pub location: String,
    /// `1` when text-and-data-mining rights are reserved.
    #[serde(rename = "tdm-reservation", default)]
    pub reservation: u8,
    /// Where the rights holder's licensing policy is, if given.
    #[serde(rename = "tdm-policy", default)]
    pub policy: Option<String>,
}

/// The rules of a host's `/.well-known/tdmrep.json` (TDMRep: a JSON array of rules, the first whose
/// `location` matches the path applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TdmRep {
    /// The rules in file order.
    pub rules: Vec<TdmRule>,
}

impl TdmRep {
    /// Parses the file; a body that is not such an array is an error naming what was found.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("tdmrep.json is not JSON: {e}"))?;
        let items = value.as_array().ok_or("tdmrep.json: expected a JSON array of rules, found another value")?;
        let mut rules = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rule: TdmRule =
                serde_json::from_value(item.clone()).map_err(|e| format!("tdmrep.json rule {i}: {e}"))?;
            rules.push(TdmRule { location: encode_pattern(&rule.location), ..rule });
        }
        Ok(Self { rules })
    }

    /// The rule reserving rights over `path`, if the first rule matching it does.
    pub fn reserving(&self, path: &str) -> Option<&TdmRule> {
        let location = |l: &str| if l.starts_with('/') { l.to_string() } else { format!("/{l}") };
        self.rules.iter().find(|r| pattern_matches(&location(&r.location), path)).filter(|r| r.reservation == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn x_robots_tag_parsing() {
        let mut h = HeaderMap::new();
        h.append("x-robots-tag", HeaderValue::from_static("noarchive, NoAI"));
        assert_eq!(x_robots_tag_disallowed(&h).as_deref(), Some("noai"));
        let mut h = HeaderMap::new();
        h.append("x-robots-tag", HeaderValue::from_static("googlebot: noindex"));
        assert_eq!(x_robots_tag_disallowed(&h), None);
        h.append("x-robots-tag", HeaderValue::from_static("pixforge: noimageai"));
        assert_eq!(x_robots_tag_disallowed(&h).as_deref(), Some("noimageai"));
        let mut h = HeaderMap::new();
        h.append("x-robots-tag", HeaderValue::from_static("noml"));
        assert_eq!(x_robots_tag_disallowed(&h).as_deref(), Some("noml"));
    }

    #[test]
    fn tdm_headers() {
        let mut h = HeaderMap::new();
        h.append("tdm-reservation", HeaderValue::from_static("0"));
        assert_eq!(tdm_header_reserved(&h), None);
        h.insert("tdm-reservation", HeaderValue::from_static(" 1"));
        h.insert("tdm-policy", HeaderValue::from_static("https://example.com/policy.json"));
        assert_eq!(tdm_header_reserved(&h).as_deref(), Some("https://example.com/policy.json"));
    }

    #[test]
    fn patterns_follow_rfc_9309() {
        assert!(pattern_matches("/", "/anything"));
        assert!(pattern_matches("/fish", "/fish.html"));
        assert!(!pattern_matches("/fish", "/Fish.asp"));
        assert!(pattern_matches("/*.php", "/folder/filename.php?parameters"));
        assert!(!pattern_matches("/*.php$", "/filename.php?parameters"));
        assert!(pattern_matches("/*.php$", "/folder/filename.php"));
        assert!(pattern_matches("/fish*.php", "/fishheads/catfish.php?parameters"));
        assert!(!pattern_matches("/fish*.php", "/Fish.PHP"));
        assert!(pattern_matches("/a$", "/a"));
        assert!(!pattern_matches("/a$", "/ab"));
        assert!(pattern_matches("/*/b*c$", "/x/b/c/yc"));
    }

    #[test]
    fn the_group_for_pixforge_wins_over_star_and_the_longest_rule_decides() {
        let txt = b"# comment\nUser-agent: *\nDisallow: /\n\nUser-agent: googlebot\nUser-agent: PixForge/1.0\nDisallow: /private\nAllow: /private/ok\nDisallow: /*.gif$\nSitemap: https://x/s.xml\n";
        let r = RobotsTxt::parse(txt);
        assert!(r.for_pixforge);
        assert_eq!(r.disallowing("/public/a.jpg"), None);
        assert_eq!(r.disallowing("/private/a.jpg").map(|r| r.pattern.as_str()), Some("/private"));
        assert_eq!(r.disallowing("/private/ok/a.jpg"), None);
        assert!(r.disallowing("/x/a.gif").is_some());
        assert_eq!(r.disallowing("/x/a.gif?v=1"), None);
        let star = RobotsTxt::parse(b"User-agent: *\nDisallow: /img/\nAllow: /img/free\n");
        assert!(!star.for_pixforge);
        assert!(star.disallowing("/img/a.jpg").is_some());
        assert_eq!(star.disallowing("/img/free.jpg"), None);
        // A tie between equally long patterns goes to Allow.
        let tie = RobotsTxt::parse(b"User-agent: *\nDisallow: /a\nAllow: /a\n");
        assert_eq!(tie.disallowing("/a"), None);
        // An empty Disallow allows everything; a group for pixforge with no rules overrides `*`.
        assert_eq!(RobotsTxt::parse(b"User-agent: *\nDisallow:\n").disallowing("/a"), None);
        let empty = RobotsTxt::parse(b"User-agent: *\nDisallow: /\nUser-agent: pixforge\n");
        assert_eq!(empty.disallowing("/a"), None);
        // Two groups naming pixforge merge; a rule before any group is ignored.
        let two = RobotsTxt::parse(b"Disallow: /x\nUser-agent: pixforge\nDisallow: /a\nUser-agent: bot\n\nUser-agent: pixforge\nDisallow: /b\n");
        assert!(two.disallowing("/a1").is_some() && two.disallowing("/b1").is_some());
        assert_eq!(two.disallowing("/x"), None);
        // Non-ASCII patterns compare with the URL's percent-encoded path.
        let utf8 = RobotsTxt::parse("User-agent: *\nDisallow: /bilder/größe\n".as_bytes());
        assert!(utf8.disallowing("/bilder/gr%C3%B6%C3%9Fe.jpg").is_some());
    }

    #[test]
    fn tdmrep_first_matching_rule_applies() {
        let body = br#"[{"location": "/free/*", "tdm-reservation": 0},
                       {"location": "/*", "tdm-reservation": 1, "tdm-policy": "https://x/policy"}]"#;
        let t = TdmRep::parse(body).unwrap();
        assert_eq!(t.reserving("/free/a.jpg"), None);
        assert_eq!(t.reserving("/img/a.jpg").and_then(|r| r.policy.as_deref()), Some("https://x/policy"));
        assert!(TdmRep::parse(b"{\"location\": \"/\"}").unwrap_err().contains("expected a JSON array"));
        assert!(TdmRep::parse(b"[{\"tdm-reservation\": 1}]").unwrap_err().contains("rule 0"));
    }
}
