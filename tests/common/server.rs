//! A loopback HTTP/1.1 server for downloader tests: serves `tests/data/images` under `/img/` and
//! fault endpoints. It speaks raw HTTP so that faults (cut bodies, slow drips, lying headers) are exact.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server saw.
#[derive(Default)]
pub struct Log {
    /// Times each path was requested.
    pub hits: HashMap<String, Vec<Instant>>,
    /// Bytes of body written per path before the client went away or the body ended.
    pub body_bytes_sent: HashMap<String, u64>,
    /// User-Agent of the last request.
    pub user_agent: String,
}

/// A fixed answer for one path: status line, headers and body.
#[derive(Clone)]
pub struct Route {
    /// Status line after `HTTP/1.1 `, such as `200 OK`.
    pub status: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Route {
    /// A `200 OK` with this body and content type.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self { status: "200 OK", headers: vec![("Content-Type", content_type.to_string())], body: body.into() }
    }
}

/// A running server; it stops when the test process ends.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Request log.
    pub log: Arc<Mutex<Log>>,
}

impl Server {
    /// Starts the server on an ephemeral loopback port, serving images from `images`.
    pub fn start(images: PathBuf) -> Self {
        Self::with_routes(images, HashMap::new())
    }

    /// Starts the server with these fixed answers, which take precedence over the built-in endpoints.
    pub fn with_routes(images: PathBuf, routes: HashMap<String, Route>) -> Self {
        let routes = Arc::new(routes);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Log::default()));
        let (log2, base2) = (log.clone(), base.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, images, base, routes) = (log2.clone(), images.clone(), base2.clone(), routes.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &log, &images, &base, &routes);
                });
            }
        });
        Self { base, log }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Request times of `path`.
    pub fn hits(&self, path: &str) -> Vec<Instant> {
        self.log.lock().unwrap().hits.get(path).cloned().unwrap_or_default()
    }
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut b)? == 0 {
            break;
        }
        buf.push(b[0]);
        if buf.len() > 65536 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".png") {
        "image/png"
    } else if name.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

fn handle(
    mut stream: TcpStream,
    log: &Mutex<Log>,
    images: &std::path::Path,
    base: &str,
    routes: &HashMap<String, Route>,
) -> std::io::Result<()> {
    let head = read_head(&mut stream)?;
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let ua = head
        .lines()
        .find_map(|l| l.strip_prefix("user-agent: ").or_else(|| l.strip_prefix("User-Agent: ")))
        .unwrap_or("")
        .to_string();
    let n = {
        let mut l = log.lock().unwrap();
        l.user_agent = ua;
        let v = l.hits.entry(path.clone()).or_default();
        v.push(Instant::now());
        v.len()
    };
    let image = |name: &str| std::fs::read(images.join(name));
    let sent = |bytes: u64| {
        *log.lock().unwrap().body_bytes_sent.entry(path.clone()).or_default() += bytes;
    };
    if let Some(r) = routes.get(&path) {
        let headers: Vec<(&str, String)> = r.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
        return respond(&mut stream, r.status, &headers, &r.body);
    }
    match path.as_str() {
        p if p.starts_with("/img/") => {
            let name = &p[5..];
            match image(name) {
                Ok(b) => respond(&mut stream, "200 OK", &[("Content-Type", content_type(name).into())], &b),
                Err(_) => respond(&mut stream, "404 Not Found", &[], b"no such image"),
            }
        }
        p if p.starts_with("/delay/") => {
            // An image answered after 1.5 s.
            std::thread::sleep(Duration::from_millis(1500));
            let name = &p[7..];
            respond(&mut stream, "200 OK", &[("Content-Type", content_type(name).into())], &image(name)?)
        }
        p if p.starts_with("/hang/") => {
            // Headers never come: the request times out.
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
        "/404" => respond(&mut stream, "404 Not Found", &[], b"not here"),
        p if p.starts_with("/flaky/") => {
            if n == 1 {
                respond(&mut stream, "500 Internal Server Error", &[], b"try again")
            } else {
                respond(&mut stream, "200 OK", &[("Content-Type", "image/png".into())], &image("astronaut.png")?)
            }
        }
        "/always-500" => respond(&mut stream, "503 Service Unavailable", &[], b"down"),
        p if p.starts_with("/429/") => {
            if n == 1 {
                respond(&mut stream, "429 Too Many Requests", &[("Retry-After", "1".into())], b"slow down")
            } else {
                respond(&mut stream, "200 OK", &[("Content-Type", "image/png".into())], &image("camera.png")?)
            }
        }
        "/slow" => {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n",
            )?;
            for _ in 0..100 {
                stream.write_all(b"x")?;
                stream.flush()?;
                sent(1);
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        }
        "/truncated-body" => {
            let b = image("chelsea.png")?;
            let head = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(&b[..b.len() / 3])?;
            sent((b.len() / 3) as u64);
            stream.flush()?;
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        "/text" => respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "text/html".into())],
            b"<html><body>not an image</body></html>",
        ),
        "/huge-declared" => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: 4000000000\r\n\r\n")?;
            stream_zeros(&mut stream, 64 << 20, &sent)
        }
        "/huge-chunked" => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            let chunk = vec![0u8; 65536];
            for _ in 0..1024 {
                stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                stream.write_all(&chunk)?;
                stream.write_all(b"\r\n")?;
                sent(chunk.len() as u64);
            }
            stream.write_all(b"0\r\n\r\n")
        }
        "/loop" => respond(&mut stream, "302 Found", &[("Location", format!("{base}/loop"))], b""),
        p if p.starts_with("/chain/") => {
            let k: u32 = p[7..].parse().unwrap_or(0);
            if k == 0 {
                respond(&mut stream, "200 OK", &[("Content-Type", "image/jpeg".into())], &image("rocket.jpg")?)
            } else {
                respond(&mut stream, "302 Found", &[("Location", format!("{base}/chain/{}", k - 1))], b"")
            }
        }
        "/noai" => {
            // A body far larger than socket buffers: a client that reads it would receive it all.
            stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: image/jpeg\r\nX-Robots-Tag: noai, noimageai\r\nContent-Length: 67108864\r\n\r\n")?;
            stream_zeros(&mut stream, 64 << 20, &sent)
        }
        "/googlebot-only" => {
            let b = image("hubble_deep_field.jpg")?;
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", "image/jpeg".into()), ("X-Robots-Tag", "googlebot: noindex".into())],
                &b,
            )
        }
        "/bomb.png" => respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "image/png".into())],
            &pixforge::bench::bombs::png_declaring(60000, 60000),
        ),
        _ => respond(&mut stream, "404 Not Found", &[], b"unknown endpoint"),
    }
}

fn stream_zeros(stream: &mut TcpStream, total: u64, sent: &dyn Fn(u64)) -> std::io::Result<()> {
    let chunk = vec![0u8; 65536];
    let mut done = 0;
    while done < total {
        match stream.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                done += k as u64;
                sent(k as u64);
            }
        }
    }
    Ok(())
}
