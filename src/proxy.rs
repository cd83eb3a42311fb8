//! HTTP proxies from the environment, read as curl and Go read them: `http_proxy` / `HTTP_PROXY` for
//! `http://` URLs, `https_proxy` / `HTTPS_PROXY` for `https://` URLs, `all_proxy` / `ALL_PROXY` for
//! either when the scheme's own variable is unset, and `no_proxy` / `NO_PROXY` for the hosts that go
//! direct (`*`, host names matching themselves and their subdomains, with or without a leading dot,
//! IP addresses and CIDR ranges; a port after a name is ignored). The lower-case name wins when
//! both are set; an empty value is unset. As in Go, loopback hosts (`localhost`, `127.0.0.0/8`, `::1`)
//! never go through a proxy. One reading serves the downloader and the captioning client.

use std::net::IpAddr;
use url::Url;

/// The proxy configuration of the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyEnv {
    http: Option<Url>,
    https: Option<Url>,
    all: Option<Url>,
    direct: Vec<Direct>,
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq)]
enum Direct {
    Everything,
    Domain(String),
    Net(IpAddr, u8),
}

impl ProxyEnv {
    /// The proxies of this process's environment; an unusable value is an error naming its variable.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)
    }

    /// The proxies that `var` (a variable lookup) describes.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| {
            [name.to_ascii_lowercase(), name.to_string()]
                .into_iter()
                .find_map(|n| var(&n).filter(|v| !v.trim().is_empty()).map(|v| (n, v.trim().to_string())))
        };
        let proxy = |name: &str| -> Result<Option<Url>, String> {
            let Some((n, v)) = get(name) else { return Ok(None) };
            let text = if v.contains("://") { v.clone() } else { format!("http://{v}") };
            let url = Url::parse(&text).map_err(|e| format!("{n}={v:?}: not a proxy URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "{n}={v:?}: expected an http:// or https:// proxy, found scheme {:?}",
                    url.scheme()
                ));
            }
            if url.host_str().is_none() {
                return Err(format!("{n}={v:?}: the proxy URL names no host"));
            }
            Ok(Some(url))
        };
        let direct = match get("NO_PROXY") {
            None => Vec::new(),
            Some((_, v)) => v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(parse_direct).collect(),
        };
        Ok(Self { http: proxy("HTTP_PROXY")?, https: proxy("HTTPS_PROXY")?, all: proxy("ALL_PROXY")?, direct })
    }

    /// Whether any proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none() && self.all.is_none()
    }

    /// The proxy a request to `url` goes through, or `None` for a direct connection.
    pub fn for_url(&self, url: &Url) -> Option<&Url> {
        let proxy = match url.scheme() {
            "http" => self.http.as_ref().or(self.all.as_ref()),
            "https" => self.https.as_ref().or(self.all.as_ref()),
            _ => None,
        }?;
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        if host == "localhost" || host.ends_with(".localhost") || ip.is_some_and(|ip| ip.is_loopback()) {
            return None;
        }
        let direct = self.direct.iter().any(|d| match (d, ip) {
            (Direct::Everything, _) => true,
            (Direct::Net(net, bits), Some(ip)) => in_net(ip, *net, *bits),
            (Direct::Net(..), None) => false,
            (Direct::Domain(d), _) => host == *d || host.ends_with(&format!(".{d}")),
        });
        (!direct).then_some(proxy)
    }

    /// The host names of the configured proxies (which a private-address guard must let through:
    /// the user chose them).
    pub fn proxy_hosts(&self) -> Vec<String> {
        [&self.http, &self.https, &self.all]
            .into_iter()
            .flatten()
            .filter_map(|u| u.host_str())
            .map(str::to_string)
            .collect()
    }

    /// The proxies as a `reqwest` proxy matcher, `None` when there are none.
    pub fn to_reqwest(&self) -> Option<reqwest::Proxy> {
        if self.is_empty() {
            return None;
        }
        let me = self.clone();
        Some(reqwest::Proxy::custom(move |url| me.for_url(url).cloned()))
    }

    /// A `reqwest` client builder using exactly these proxies (none: direct, the system's not read).
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match self.to_reqwest() {
            Some(p) => builder.no_proxy().proxy(p),
            None => builder.no_proxy(),
        }
    }
}

fn parse_direct(entry: &str) -> Direct {
    if entry == "*" {
        return Direct::Everything;
    }
    if let Some((addr, bits)) = entry.split_once('/') {
        if let (Ok(ip), Ok(bits)) = (addr.parse::<IpAddr>(), bits.parse::<u8>()) {
            return Direct::Net(ip, bits);
        }
    }
    let bare = entry.trim_start_matches('[');
    if let Ok(ip) = bare.split(']').next().unwrap_or(bare).parse::<IpAddr>() {
        return Direct::Net(ip, if ip.is_ipv4() { 32 } else { 128 });
    }
    let name = entry.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(entry, |(h, _)| h);
    Direct::Domain(name.trim_start_matches("*.").trim_start_matches('.').to_ascii_lowercase())
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return false,
    };
    let bits = (bits as u32).min(width);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProxyEnv::from_vars(|n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap()
    }

    fn via(e: &ProxyEnv, url: &str) -> Option<String> {
        e.for_url(&Url::parse(url).unwrap()).map(|u| u.host_str().unwrap().to_string())
    }

    #[test]
    fn proxies_by_scheme_with_exceptions() {
        let e = env(&[
            ("HTTP_PROXY", "http://upper:3128"),
            ("http_proxy", "lower:3128"),
            ("ALL_PROXY", "http://all:8080"),
            ("NO_PROXY", "internal.example, .corp.example:443, 10.0.0.0/8, 192.168.1.7, [fd00::1]"),
        ]);
        assert_eq!(via(&e, "http://images.example/a.jpg").as_deref(), Some("lower"), "lower case wins");
        assert_eq!(via(&e, "https://images.example/a.jpg").as_deref(), Some("all"), "ALL_PROXY when no HTTPS_PROXY");
        for direct in [
            "http://internal.example/x",
            "http://cdn.internal.example/x",
            "https://a.corp.example/x",
            "http://10.2.3.4/x",
            "http://192.168.1.7/x",
            "http://[fd00::1]/x",
            "http://localhost:8000/v1",
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
        ] {
            assert_eq!(via(&e, direct), None, "{direct}");
        }
        assert_eq!(via(&e, "http://notinternal.example/x").as_deref(), Some("lower"));
        assert_eq!(via(&e, "http://192.168.1.8/x").as_deref(), Some("lower"));
        assert!(env(&[]).is_empty());
        assert_eq!(via(&env(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")]), "https://a.example/"), None);
        let bad = ProxyEnv::from_vars(|n| (n == "https_proxy").then(|| "socks5://p:1080".to_string())).unwrap_err();
        assert!(bad.contains("https_proxy") && bad.contains("socks5"), "{bad}");
    }
}
