//! A loopback OpenAI-compatible `/v1/chat/completions` server for the caption tests. It checks every
//! request's shape (model, one user message with an image data URL that decodes, then the text,
//! temperature, max_tokens, bearer key) and answers by the sample key it finds in the text
//! ("… sample KEY …") and the seed sent, with the faults a test assigns to keys.

use base64::Engine;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does with a key's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The first `n` requests get HTTP 500.
    Error500(usize),
    /// Always HTTP 500.
    Always500,
    /// The first request gets 429 with `Retry-After: secs`.
    TooMany(u64),
    /// The first request gets a 200 whose body is not JSON.
    Malformed,
    /// The first request is answered after `ms` milliseconds (longer than the client's timeout).
    Hang(u64),
    /// The first answer is a refusal.
    RefuseOnce,
    /// Every answer opens with "The image shows".
    Boilerplate,
}

/// What the server saw.
#[derive(Default, Debug)]
pub struct Log {
    /// Requests per key.
    pub requests: HashMap<String, usize>,
    /// Successful (200, JSON) answers per key.
    pub answered: HashMap<String, usize>,
    /// Request times per key.
    pub times: HashMap<String, Vec<Instant>>,
    /// Requests whose shape was wrong, with why.
    pub violations: Vec<String>,
    /// The last request body.
    pub last_body: Option<serde_json::Value>,
    /// Requests in flight now, and the most at once.
    pub in_flight: usize,
    /// The most requests in flight at once.
    pub max_in_flight: usize,
    /// The last image received per key: its MIME type, byte length and decoded size.
    pub images: HashMap<String, SentImage>,
}

/// An image as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct SentImage {
    pub mime: String,
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// The expectations and behaviour of a server.
#[derive(Clone)]
pub struct Expect {
    pub model: String,
    pub temperature: f64,
    pub api_key: Option<String>,
    pub latency_ms: u64,
    pub faults: HashMap<String, Fault>,
}

impl Expect {
    /// A server for `model` at temperature 0.2, with no API key, no added latency and no faults.
    pub fn answering(model: &str) -> Self {
        Self { model: model.into(), temperature: 0.2, api_key: None, latency_ms: 0, faults: HashMap::new() }
    }
}

/// A running server; it stops when the test process ends.
pub struct VlmServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub log: Arc<Mutex<Log>>,
}

impl VlmServer {
    pub fn start(expect: Expect) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Log::default()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, expect) = (log2.clone(), expect.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &log, &expect);
                });
            }
        });
        Self { base, log }
    }

    pub fn requests(&self, key: &str) -> usize {
        self.log.lock().unwrap().requests.get(key).copied().unwrap_or(0)
    }
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(None);
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn check_shape(head: &str, v: &serde_json::Value, expect: &Expect) -> Result<(String, SentImage), String> {
    if !head.starts_with("POST /v1/chat/completions ") {
        return Err(format!("request line: {}", head.lines().next().unwrap_or("")));
    }
    if let Some(k) = &expect.api_key {
        let want = format!("authorization: bearer {}", k.to_ascii_lowercase());
        if !head.to_ascii_lowercase().lines().any(|l| l.trim() == want) {
            return Err("no bearer key".into());
        }
    }
    if v["model"] != expect.model.as_str() {
        return Err(format!("model {}", v["model"]));
    }
    if (v["temperature"].as_f64().unwrap_or(-1.0) - expect.temperature).abs() > 1e-9 {
        return Err(format!("temperature {}", v["temperature"]));
    }
    if v["max_tokens"].as_u64().is_none() {
        return Err("no max_tokens".into());
    }
    let msgs = v["messages"].as_array().ok_or("no messages")?;
    if msgs.len() != 1 || msgs[0]["role"] != "user" {
        return Err(format!("messages {msgs:?}"));
    }
    let content = msgs[0]["content"].as_array().ok_or("content is not a list")?;
    if content.len() != 2 || content[0]["type"] != "image_url" || content[1]["type"] != "text" {
        return Err("content: expected [image_url, text]".into());
    }
    let url = content[0]["image_url"]["url"].as_str().ok_or("no image url")?;
    let (mime, data) = url.strip_prefix("data:").and_then(|u| u.split_once(";base64,")).ok_or("not a data URL")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("base64: {e}"))?;
    let fmt = image::guess_format(&bytes).map_err(|e| format!("image: {e}"))?;
    if fmt.to_mime_type() != mime {
        return Err(format!("data URL says {mime}, bytes are {}", fmt.to_mime_type()));
    }
    let img = image::load_from_memory(&bytes).map_err(|e| format!("image does not decode: {e}"))?;
    let sent = SentImage { mime: mime.to_string(), width: img.width(), height: img.height(), bytes };
    Ok((content[1]["text"].as_str().ok_or("no text")?.to_string(), sent))
}

fn serve(mut stream: TcpStream, log: &Mutex<Log>, expect: &Expect) -> std::io::Result<()> {
    while let Some((head, body)) = read_request(&mut stream)? {
        // The client's probe before the first shard: the model list, as OpenAI-compatible servers give it.
        if head.starts_with("GET /v1/models ") {
            let list = serde_json::json!({"object": "list", "data": [{"id": expect.model, "object": "model"}]});
            respond(&mut stream, "200 OK", "", &list.to_string())?;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (text, sent) = match check_shape(&head, &v, expect) {
            Ok(t) => t,
            Err(why) => {
                log.lock().unwrap().violations.push(why.clone());
                respond(&mut stream, "400 Bad Request", "", &serde_json::json!({"error": why}).to_string())?;
                continue;
            }
        };
        let key = text.split("sample ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("").to_string();
        let n = {
            let mut l = log.lock().unwrap();
            l.last_body = Some(v.clone());
            l.images.insert(key.clone(), sent);
            l.times.entry(key.clone()).or_default().push(Instant::now());
            l.in_flight += 1;
            l.max_in_flight = l.max_in_flight.max(l.in_flight);
            let c = l.requests.entry(key.clone()).or_default();
            *c += 1;
            *c
        };
        std::thread::sleep(Duration::from_millis(expect.latency_ms));
        let fault = expect.faults.get(&key);
        let caption = match fault {
            Some(Fault::RefuseOnce) if n == 1 => "I'm sorry, but I can't help with that.".to_string(),
            Some(Fault::Boilerplate) => format!("The image shows sample {key}, a red barn under a blue sky."),
            // Like a sampling server, the text depends on the seed sent.
            _ => format!(
                "A photograph of sample {key}: a red barn, green fields and a wide blue sky (seed {}).",
                v["seed"]
            ),
        };
        let ok = serde_json::json!({
            "id": "x", "object": "chat.completion", "model": expect.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": caption}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 600, "completion_tokens": caption.split_whitespace().count(), "total_tokens": 0},
        })
        .to_string();
        let result = match fault {
            Some(Fault::Error500(k)) if n <= *k => {
                respond(&mut stream, "500 Internal Server Error", "", "{\"error\":\"boom\"}")
            }
            Some(Fault::Always500) => respond(&mut stream, "500 Internal Server Error", "", "{\"error\":\"down\"}"),
            Some(Fault::TooMany(s)) if n == 1 => respond(
                &mut stream,
                "429 Too Many Requests",
                &format!("Retry-After: {s}\r\n"),
                "{\"error\":\"slow down\"}",
            ),
            Some(Fault::Malformed) if n == 1 => respond(&mut stream, "200 OK", "", "{\"choices\": [ not json"),
            Some(Fault::Hang(ms)) if n == 1 => {
                std::thread::sleep(Duration::from_millis(*ms));
                respond(&mut stream, "200 OK", "", &ok)
            }
            _ => {
                log.lock().unwrap().answered.entry(key.clone()).and_modify(|c| *c += 1).or_insert(1);
                respond(&mut stream, "200 OK", "", &ok)
            }
        };
        log.lock().unwrap().in_flight -= 1;
        result?;
    }
    Ok(())
}
