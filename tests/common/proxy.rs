//! A loopback forward HTTP proxy for the proxy tests: it takes absolute-form requests
//! (`GET http://host/path HTTP/1.1`), logs each URL, and forwards it to the address its route table
//! gives the host (so made-up host names reach loopback servers), piping the answer back; an
//! unknown host gets 502.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A running proxy; it stops when the test process ends.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Every absolute URL requested through it, in order.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts a proxy forwarding requests for each host of `routes` to its address.
    pub fn start(routes: HashMap<String, SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (log2, routes) = (log.clone(), Arc::new(routes));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, routes) = (log2.clone(), routes.clone());
                std::thread::spawn(move || {
                    let _ = forward(stream, &log, &routes);
                });
            }
        });
        Self { url, log }
    }

    /// The URLs requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The head of an HTTP message (through the blank line), or `None` at the end of the stream.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    Ok(Some(String::from_utf8_lossy(&head).to_string()))
}

/// Forwards one request, then closes the client's connection (the answer says so).
fn forward(
    mut client: TcpStream,
    log: &Mutex<Vec<String>>,
    routes: &HashMap<String, SocketAddr>,
) -> std::io::Result<()> {
    let Some(head) = read_head(&mut client)? else { return Ok(()) };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_string();
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
    log.lock().unwrap().push(target.to_string());
    let Ok(url) = url::Url::parse(target) else {
        return client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let Some(addr) = url.host_str().and_then(|h| routes.get(h)) else {
        return client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let mut length = 0usize;
    let mut headers = String::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("proxy-") || lower.starts_with("connection:") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        headers.push_str(line);
        headers.push_str("\r\n");
    }
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let mut upstream = TcpStream::connect(addr)?;
    upstream.write_all(format!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n").as_bytes())?;
    upstream.write_all(&body)?;
    upstream.shutdown(std::net::Shutdown::Write)?;
    let Some(answer) = read_head(&mut upstream)? else { return Ok(()) };
    let kept: Vec<&str> =
        answer.trim_end().split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    client.write_all(format!("{}\r\nConnection: close\r\n\r\n", kept.join("\r\n")).as_bytes())?;
    std::io::copy(&mut upstream, &mut client)?;
    Ok(())
}
