//! The HTTP downloader: bounded global and per-host concurrency, timeouts, retries with backoff,
//! `Retry-After`, body size limit, redirect limit, DNS cache, private-address refusal, the
//! environment's proxies ([`crate::proxy`], the destination still checked), and
//! `X-Robots-Tag` opt-outs honoured from the headers before any body byte is read.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

use super::optout::{self, RobotsTxt, TdmRep};

/// The User-Agent sent with every request; servers can address us as `pixforge` in robots.txt and
/// `X-Robots-Tag`.
pub const USER_AGENT: &str = concat!(
    "pixforge/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/pixforge/pixforge; image dataset tool; honours robots.txt, TDMRep and X-Robots-Tag noai)"
);

/// Downloader settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Parser)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadOptions {
    /// Requests in flight at once, over all hosts.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Requests in flight at once to one host.
    #[arg(long, default_value_t = 16)]
    pub per_host_concurrency: usize,
    /// Seconds to establish a connection.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds without receiving a byte before a request fails.
    #[arg(long, default_value_t = 10.0)]
    pub read_timeout: f64,
    /// Seconds for a whole request, body included.
    #[arg(long, default_value_t = 60.0)]
    pub total_timeout: f64,
    /// Extra attempts after a transient failure (timeouts, connection errors, 429, 5xx, cut bodies).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// First retry delay in seconds; doubled on each further retry.
    #[arg(long, default_value_t = 1.0)]
    pub retry_backoff: f64,
    /// Longest `Retry-After` honoured, in seconds; a longer one fails the row.
    #[arg(long, default_value_t = 60.0)]
    pub max_retry_after: f64,
    /// Largest body accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: u64,
    /// Redirects followed before failing.
    #[arg(long, default_value_t = 5)]
    pub max_redirects: usize,
    /// Requests to one host that time out in a row before the host's remaining rows of the run fail
    /// at once, so that a host that stopped answering cannot hold a shard for its queue times its
    /// timeouts (`--retry-failed` tries them again); 0 never gives a host up.
    #[arg(long, default_value_t = 16)]
    pub max_host_timeouts: u32,
    /// Download even when `X-Robots-Tag` forbids AI use (noai, noimageai, noml, noindex,
    /// noimageindex). Honouring opt-outs is the user's responsibility once this is set.
    #[arg(long)]
    pub ignore_robots_headers: bool,
    /// Download without reading each host's robots.txt first. Honouring opt-outs is the user's
    /// responsibility once this is set.
    #[arg(long)]
    pub ignore_robots_txt: bool,
    /// Download without reading each host's `/.well-known/tdmrep.json` and the `tdm-reservation`
    /// header (the TDM Reservation Protocol, the EU text-and-data-mining opt-out). Honouring opt-outs
    /// is the user's responsibility once this is set.
    #[arg(long)]
    pub ignore_tdmrep: bool,
    /// What a host whose robots.txt or tdmrep.json answers 429, 5xx or not at all (after the retries)
    /// means: `disallow` every image of the host for the run (RFC 9309's rule), or `allow` them.
    #[arg(long, value_enum, default_value_t = Unreachable::Disallow)]
    pub opt_outs_unreachable: Unreachable,
    /// Allow private, loopback and link-local addresses (local mirrors and tests).
    #[arg(long)]
    pub allow_private_addresses: bool,
}

/// What an unreachable robots.txt or tdmrep.json means for the host's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    /// Download none of the host's images (RFC 9309's rule for robots.txt).
    Disallow,
    /// Download them as if the file were absent.
    Allow,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        clap::Parser::parse_from(["download"])
    }
}

/// The message of a request that timed out.
const TIMED_OUT: &str = "timed out";

/// Why a download failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// Message stored in `error_message`.
    pub message: String,
    /// Whether the failure is worth retrying.
    pub transient: bool,
    /// Delay the server asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The HTTP status, when the server answered with an error status.
    pub status: Option<u16>,
}

impl FetchError {
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: false, retry_after: None, status: None }
    }
    fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: true, retry_after: None, status: None }
    }
}

/// Whether `ip` is private, loopback, link-local, unspecified or otherwise not a public address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private() || v.is_loopback() || v.is_link_local() || v.is_unspecified() || v.is_broadcast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64 // carrier-grade NAT 100.64/10
                || v.octets()[0] == 0
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v.segments()[0];
            v.is_loopback() || v.is_unspecified() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

fn private_refusal(what: &str) -> String {
    format!("refused private address: {what} (a URL list is untrusted input; pass --allow-private-addresses for local mirrors)")
}

type DnsCache = Arc<Mutex<HashMap<String, (Instant, Result<Vec<SocketAddr>, String>)>>>;

/// A caching resolver: one lookup per host name for five minutes, failures cached for 30 s; refuses
/// names that resolve only to private addresses unless allowed (checked on every connection, so a
/// DNS answer cannot smuggle a private address past the URL check). The configured proxies' hosts
/// are let through: the user chose them.
#[derive(Clone)]
struct CachingResolver {
    allow_private: bool,
    proxy_hosts: Arc<Vec<String>>,
    cache: DnsCache,
}

impl CachingResolver {
    /// The addresses of `host`, from the cache or a lookup.
    async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let now = Instant::now();
        let cached = self.cache.lock().ok().and_then(|c| c.get(host).filter(|(t, _)| *t > now).map(|(_, r)| r.clone()));
        if let Some(r) = cached {
            return r;
        }
        let (ttl, r) = match tokio::net::lookup_host((host, 0)).await {
            Ok(addrs) => (Duration::from_secs(300), Ok(addrs.collect::<Vec<_>>())),
            Err(e) => (Duration::from_secs(30), Err(format!("DNS resolution failed: {host}: {e}"))),
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(host.to_string(), (Instant::now() + ttl, r.clone()));
        }
        r
    }

    /// `addrs` of `host` less the private ones (unless allowed), or the refusal when none is left.
    fn public(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
        let allowed = self.allow_private || self.proxy_hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
        let kept: Vec<SocketAddr> = addrs.iter().copied().filter(|a| allowed || !is_private(a.ip())).collect();
        if kept.is_empty() {
            let shown = addrs.first().map(|a| a.ip().to_string()).unwrap_or_default();
            return Err(private_refusal(&format!("{shown} (host {host})")));
        }
        Ok(kept)
    }
}

impl Resolve for CachingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let me = self.clone();
        Box::pin(async move {
            let addrs = me.addresses(&host).await?;
            Ok(Box::new(me.public(&host, addrs)?.into_iter()) as Addrs)
        })
    }
}

/// Per-host state: its concurrency limit and the time before which it asked us to wait.
#[derive(Default)]
struct HostState {
    slots: Option<Arc<Semaphore>>,
    blocked_until: Option<Instant>,
    timeouts_in_a_row: u32,
}

/// An HTTP downloader shared by all rows of a run.
pub struct Downloader {
    client: reqwest::Client,
    opts: DownloadOptions,
    proxy: crate::proxy::ProxyEnv,
    resolver: CachingResolver,
    global: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, HostState>>,
    opt_outs: Mutex<HashMap<String, Arc<OnceCell<Arc<HostOptOuts>>>>>,
}

/// What a file a host publishes its opt-outs in said: its rules, nothing (absent, ignored or not
/// such a file), or why it could not be read.
enum OptOutFile<T> {
    Rules(T),
    Absent,
    Unreachable(String),
}

/// A host's opt-out files, read once per run.
struct HostOptOuts {
    robots: OptOutFile<RobotsTxt>,
    tdmrep: OptOutFile<TdmRep>,
}

/// What one request gave: a body, or a redirect to follow.
enum Fetched {
    Body(Vec<u8>),
    Redirect(url::Url),
}

/// What is requested: an image (opt-out headers checked, body bounded by `--max-body-bytes`) or an
/// opt-out file (read up to [`optout::MAX_POLICY_BYTES`], the rest ignored).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Request {
    Image,
    OptOutFile,
}

/// The delay a `Retry-After` header asks for (seconds; HTTP dates are not honoured).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>().ok().filter(|s| *s >= 0.0).map(Duration::from_secs_f64)
}

pub(crate) fn describe(e: &reqwest::Error) -> FetchError {
    let mut chain = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !chain.contains(&text) {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&text);
        }
        src = s.source();
    }
    if e.is_timeout() {
        return FetchError::transient(TIMED_OUT);
    }
    if e.is_redirect() {
        return FetchError::permanent(if chain.is_empty() { "too many redirects".to_string() } else { chain });
    }
    if chain.contains("refused private address") {
        let start = chain.find("refused private address").unwrap_or(0);
        return FetchError::permanent(chain[start..].to_string());
    }
    if chain.contains("DNS resolution failed") {
        let start = chain.find("DNS resolution failed").unwrap_or(0);
        return FetchError::transient(chain[start..].to_string());
    }
    if e.is_connect() {
        return FetchError::transient(format!("connection failed: {chain}"));
    }
    if e.is_body() || e.is_decode() {
        return FetchError::transient(format!("truncated body: {chain}"));
    }
    FetchError::transient(if chain.is_empty() { e.to_string() } else { chain })
}

impl Downloader {
    /// Builds the HTTP client, with the environment's proxies ([`crate::proxy`]). Installs the
    /// rustls crypto provider if none is installed yet.
    pub fn new(opts: DownloadOptions) -> Result<Self, String> {
        Self::with_proxy(opts, crate::proxy::ProxyEnv::from_vars(|n| std::env::var(n).ok())?)
    }

    /// Builds the HTTP client with these proxies.
    pub fn with_proxy(opts: DownloadOptions, proxy: crate::proxy::ProxyEnv) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let allow_private = opts.allow_private_addresses;
        // Redirects are followed by `fetch`, so that each target is checked (private addresses,
        // its host's opt-outs) before it is requested.
        let policy = reqwest::redirect::Policy::none();
        let resolver =
            CachingResolver { allow_private, proxy_hosts: Arc::new(proxy.proxy_hosts()), cache: Arc::default() };
        let client = proxy
            .apply(reqwest::Client::builder())
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs_f64(opts.connect_timeout))
            .read_timeout(Duration::from_secs_f64(opts.read_timeout))
            .timeout(Duration::from_secs_f64(opts.total_timeout))
            .redirect(policy)
            .pool_max_idle_per_host(opts.per_host_concurrency)
            .tcp_nodelay(true)
            .dns_resolver(resolver.clone())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let global = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Ok(Self { client, global, opts, proxy, resolver, hosts: Mutex::default(), opt_outs: Mutex::default() })
    }

    /// The options in use.
    pub fn options(&self) -> &DownloadOptions {
        &self.opts
    }

    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().expect("host table poisoned");
        let st = hosts.entry(host.to_string()).or_default();
        st.slots.get_or_insert_with(|| Arc::new(Semaphore::new(self.opts.per_host_concurrency.max(1)))).clone()
    }

    fn host_wait(&self, host: &str) -> Option<Instant> {
        let hosts = self.hosts.lock().expect("host table poisoned");
        hosts.get(host).and_then(|h| h.blocked_until).filter(|t| *t > Instant::now())
    }

    /// Refuses a request to `host` once `--max-host-timeouts` requests to it timed out in a row.
    fn check_host_answers(&self, host: &str) -> Result<(), FetchError> {
        let max = self.opts.max_host_timeouts;
        let hosts = self.hosts.lock().expect("host table poisoned");
        let in_a_row = hosts.get(host).map_or(0, |h| h.timeouts_in_a_row);
        if max > 0 && in_a_row >= max {
            return Err(FetchError::permanent(format!(
                "host skipped: {host} timed out on {in_a_row} requests in a row (--max-host-timeouts {max}; \
                 --retry-failed tries these rows again)"
            )));
        }
        Ok(())
    }

    /// Counts a request to `host` that timed out, or resets the count when it answered.
    fn count_timeout(&self, host: &str, timed_out: bool) {
        let mut hosts = self.hosts.lock().expect("host table poisoned");
        let st = hosts.entry(host.to_string()).or_default();
        st.timeouts_in_a_row = if timed_out { st.timeouts_in_a_row + 1 } else { 0 };
    }

    fn block_host(&self, host: &str, d: Duration) {
        let mut hosts = self.hosts.lock().expect("host table poisoned");
        let st = hosts.entry(host.to_string()).or_default();
        let until = Instant::now() + d;
        if st.blocked_until.is_none_or(|t| t < until) {
            st.blocked_until = Some(until);
        }
    }

    /// Downloads `url`, retrying transient failures; returns the body or the last error message.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut url = url::Url::parse(url).map_err(|e| format!("invalid URL: {url:?}: {e}"))?;
        let mut visited: Vec<url::Url> = Vec::new();
        loop {
            self.check_destination(&url, !visited.is_empty()).await?;
            self.check_opt_outs(&url).await?;
            let host = url.host_str().unwrap_or_default().to_string();
            let fetched = {
                let _global = self.global.acquire().await.map_err(|e| e.to_string())?;
                self.request(&url, &host, Request::Image).await.map_err(|e| e.message)?
            };
            let next = match fetched {
                Fetched::Body(body) => return Ok(body),
                Fetched::Redirect(next) => next,
            };
            visited.push(std::mem::replace(&mut url, next));
            if visited.len() > self.opts.max_redirects {
                return Err(format!("too many redirects (more than --max-redirects {})", self.opts.max_redirects));
            }
            if visited.contains(&url) {
                return Err(format!("redirect loop: {url}"));
            }
        }
    }

    /// Refuses a URL whose scheme is not http(s) or whose destination is a private address (unless
    /// allowed); `redirected` marks a redirect target in the message.
    async fn check_destination(&self, url: &url::Url, redirected: bool) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme: {:?} (expected http or https)", url.scheme()));
        }
        if self.opts.allow_private_addresses {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default();
        if let Some(ip) = literal_ip(url) {
            if is_private(ip) {
                let what = if redirected { format!("{ip} (redirect target)") } else { ip.to_string() };
                return Err(private_refusal(&what));
            }
        } else if self.proxy.for_url(url).is_some() {
            // Through a proxy the destination is resolved by the proxy: the name is resolved here
            // too and refused when it names only private addresses. A name this machine cannot
            // resolve is left to the proxy (networks whose DNS only the proxy sees).
            if let Ok(addrs) = self.resolver.addresses(host).await {
                self.resolver.public(host, addrs)?;
            }
        }
        Ok(())
    }

    /// `parsed` with retries of transient failures (the caller holds a global slot); the last error,
    /// its message saying how many attempts were made.
    async fn request(&self, parsed: &url::Url, host: &str, what: Request) -> Result<Fetched, FetchError> {
        let slots = self.host_slots(host);
        let mut attempt = 0;
        loop {
            if let Some(until) = self.host_wait(host) {
                tokio::time::sleep_until(until.into()).await;
            }
            let result = {
                let _slot = slots.acquire().await.map_err(|e| FetchError::permanent(e.to_string()))?;
                self.check_host_answers(host)?;
                let result = self.fetch_once(parsed.clone(), what).await;
                self.count_timeout(host, result.as_ref().err().is_some_and(|e| e.message == TIMED_OUT));
                result
            };
            match result {
                Ok(body) => return Ok(body),
                Err(e) if !e.transient || attempt >= self.opts.retries => {
                    let tries = if attempt > 0 { format!(" (after {} attempts)", attempt + 1) } else { String::new() };
                    return Err(FetchError { message: format!("{}{tries}", e.message), ..e });
                }
                Err(e) => {
                    let backoff = Duration::from_secs_f64(self.opts.retry_backoff * f64::powi(2.0, attempt as i32));
                    if let Some(ra) = e.retry_after {
                        if ra.as_secs_f64() > self.opts.max_retry_after {
                            let message = format!(
                                "{} with Retry-After {} s, longer than --max-retry-after {} s",
                                e.message,
                                ra.as_secs_f64(),
                                self.opts.max_retry_after
                            );
                            return Err(FetchError { message, ..e });
                        }
                        self.block_host(host, ra);
                    } else {
                        tokio::time::sleep(backoff).await;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Refuses `url` when its host's robots.txt or tdmrep.json opts it out of AI use, reading each
    /// host's files once per run (concurrent rows of a host wait for the one read).
    async fn check_opt_outs(&self, url: &url::Url) -> Result<(), String> {
        if self.opts.ignore_robots_txt && self.opts.ignore_tdmrep {
            return Ok(());
        }
        let origin = url.origin().ascii_serialization();
        let cell = {
            let mut map = self.opt_outs.lock().expect("opt-out table poisoned");
            map.entry(origin.clone()).or_default().clone()
        };
        let found = cell.get_or_init(|| self.read_opt_outs(&origin)).await;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let unreachable = |file: &str, why: &str| {
            if why.starts_with("refused private address") {
                return why.to_string();
            }
            format!(
                "{origin}/{file} could not be read ({why}); an unreachable opt-out file disallows the whole host \
                 (--opt-outs-unreachable allow to download anyway)"
            )
        };
        let allow_unreachable = self.opts.opt_outs_unreachable == Unreachable::Allow;
        match &found.robots {
            OptOutFile::Rules(robots) => {
                if let Some(rule) = robots.disallowing(&path) {
                    let group = if robots.for_pixforge { "User-agent: pixforge" } else { "User-agent: *" };
                    return Err(format!(
                        "disallowed by {origin}/robots.txt ({group}, {rule}), checked before any request for the \
                         image (--ignore-robots-txt to override)"
                    ));
                }
            }
            OptOutFile::Unreachable(why) if !allow_unreachable => return Err(unreachable("robots.txt", why)),
            _ => {}
        }
        match &found.tdmrep {
            OptOutFile::Rules(tdm) => {
                if let Some(rule) = tdm.reserving(&path) {
                    let policy = rule.policy.as_deref().map(|p| format!(", policy {p}")).unwrap_or_default();
                    return Err(format!(
                        "text-and-data-mining rights reserved by {origin}/.well-known/tdmrep.json (location {}{policy}), \
                         checked before any request for the image (--ignore-tdmrep to override)",
                        rule.location
                    ));
                }
            }
            OptOutFile::Unreachable(why) if !allow_unreachable => {
                return Err(unreachable(".well-known/tdmrep.json", why))
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads a host's robots.txt and tdmrep.json (those not ignored), side by side.
    async fn read_opt_outs(&self, origin: &str) -> Arc<HostOptOuts> {
        let robots = async {
            if self.opts.ignore_robots_txt {
                return OptOutFile::Absent;
            }
            match self.read_opt_out_file(&format!("{origin}/robots.txt")).await {
                OptOutFile::Rules(body) => OptOutFile::Rules(RobotsTxt::parse(&body)),
                OptOutFile::Absent => OptOutFile::Absent,
                OptOutFile::Unreachable(why) => OptOutFile::Unreachable(why),
            }
        };
        let tdmrep = async {
            if self.opts.ignore_tdmrep {
                return OptOutFile::Absent;
            }
            match self.read_opt_out_file(&format!("{origin}/.well-known/tdmrep.json")).await {
                // A body that is not a TDMRep array (an HTML page served for every path) declares nothing.
                OptOutFile::Rules(body) => TdmRep::parse(&body).map_or(OptOutFile::Absent, OptOutFile::Rules),
                OptOutFile::Absent => OptOutFile::Absent,
                OptOutFile::Unreachable(why) => OptOutFile::Unreachable(why),
            }
        };
        let (robots, tdmrep) = tokio::join!(robots, tdmrep);
        Arc::new(HostOptOuts { robots, tdmrep })
    }

    /// One opt-out file: its body on success, absent on a 4xx other than 429 (RFC 9309's
    /// "unavailable"), unreachable on 429, 5xx or a network failure after the retries.
    async fn read_opt_out_file(&self, url: &str) -> OptOutFile<Vec<u8>> {
        let Ok(mut url) = url::Url::parse(url) else { return OptOutFile::Absent };
        for _ in 0..=self.opts.max_redirects {
            if let Err(why) = self.check_destination(&url, false).await {
                return OptOutFile::Unreachable(why);
            }
            let host = url.host_str().unwrap_or_default().to_string();
            let Ok(_global) = self.global.acquire().await else { return OptOutFile::Absent };
            match self.request(&url, &host, Request::OptOutFile).await {
                Ok(Fetched::Body(body)) => return OptOutFile::Rules(body),
                Ok(Fetched::Redirect(next)) => url = next,
                Err(e) if e.status.is_some_and(|s| (400..500).contains(&s) && s != 429) => return OptOutFile::Absent,
                Err(e) => return OptOutFile::Unreachable(e.message),
            }
        }
        OptOutFile::Unreachable(format!("more than --max-redirects {} redirects", self.opts.max_redirects))
    }

    async fn fetch_once(&self, url: url::Url, what: Request) -> Result<Fetched, FetchError> {
        let mut resp = self.client.get(url.clone()).send().await.map_err(|e| describe(&e))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
            if let Some(next) = location.and_then(|l| url.join(l).ok()) {
                return Ok(Fetched::Redirect(next));
            }
        }
        if !status.is_success() {
            let msg = format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
            let msg = msg.trim_end().to_string();
            let transient = status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error();
            let retry_after = retry_after(resp.headers());
            return Err(FetchError { message: msg, transient, retry_after, status: Some(status.as_u16()) });
        }
        if what == Request::OptOutFile {
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
                let room = optout::MAX_POLICY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() == optout::MAX_POLICY_BYTES {
                    break;
                }
            }
            return Ok(Fetched::Body(body));
        }
        if !self.opts.ignore_robots_headers {
            if let Some(d) = optout::x_robots_tag_disallowed(resp.headers()) {
                return Err(FetchError::permanent(format!(
                    "use of image disallowed by X-Robots-Tag directive {d} (checked before download; --ignore-robots-headers to override)"
                )));
            }
        }
        if !self.opts.ignore_tdmrep {
            if let Some(policy) = optout::tdm_header_reserved(resp.headers()) {
                let policy = if policy.is_empty() { String::new() } else { format!(", policy {policy}") };
                return Err(FetchError::permanent(format!(
                    "text-and-data-mining rights reserved by the response header tdm-reservation: 1{policy} \
                     (checked before download; --ignore-tdmrep to override)"
                )));
            }
        }
        let declared = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = declared {
            if n > self.opts.max_body_bytes {
                return Err(FetchError::permanent(format!(
                    "body too large: Content-Length {n} exceeds --max-body-bytes {}",
                    self.opts.max_body_bytes
                )));
            }
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(64 << 10).min(self.opts.max_body_bytes) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            if body.len() as u64 + chunk.len() as u64 > self.opts.max_body_bytes {
                return Err(FetchError::permanent(format!(
                    "body too large: more than --max-body-bytes {} bytes",
                    self.opts.max_body_bytes
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if let Some(n) = declared {
            if (body.len() as u64) < n {
                return Err(FetchError::transient(format!("truncated body: got {} of {n} bytes", body.len())));
            }
        }
        Ok(Fetched::Body(body))
    }
}

fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v) => Some(IpAddr::V4(v)),
        url::Host::Ipv6(v) => Some(IpAddr::V6(v)),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
