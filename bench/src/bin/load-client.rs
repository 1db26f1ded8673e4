//! A light, deterministic load client for callgrind runs: one keep-alive
//! HTTP/1.1 connection, requests sent one after another, the cookie
//! rotating over the users.
//!
//! ```text
//! load-client --addr 127.0.0.1:PORT --requests K --cookies PATH [--path /]
//! ```
//!
//! Every response must be a `200` with a body (`Content-Length` framing);
//! anything else stops it with an error. It prints the count and the time.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Instant;

use authgate_bench::Args;

type BoxError = Box<dyn std::error::Error>;

/// Reads one response into `buf` (which may hold bytes of the next one
/// afterwards; none here, as requests are not pipelined). Returns the status
/// and the body length.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, usize), BoxError> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or("malformed status line")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .ok_or("no Content-Length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed in a body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, length))
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse(&[])?;
    let addr = args.get("addr").ok_or("--addr is required")?;
    let requests: u64 = args.num("requests", 1000)?;
    let path = args.get("path").unwrap_or("/");
    let cookies: Vec<String> = match args.get("cookies") {
        Some(file) => std::fs::read_to_string(file)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => vec![String::new()],
    };
    let requests_bytes: Vec<Vec<u8>> = cookies
        .iter()
        .map(|cookie| {
            let cookie = if cookie.is_empty() {
                String::new()
            } else {
                format!("Cookie: {cookie}\r\n")
            };
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nUser-Agent: load-client\r\n{cookie}\r\n"
            )
            .into_bytes()
        })
        .collect();

    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(8 * 1024);
    let started = Instant::now();
    let mut body_bytes = 0usize;
    for i in 0..requests {
        let request = &requests_bytes[(i as usize) % requests_bytes.len()];
        stream.write_all(request)?;
        let (status, length) = read_response(&mut stream, &mut buf)?;
        if status != 200 {
            return Err(format!("request {i}: status {status}").into());
        }
        body_bytes += length;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "load-client: {requests} requests, all 200, {:.0} body bytes each, {elapsed:.2} s, {:.0} req/s",
        body_bytes as f64 / requests.max(1) as f64,
        requests as f64 / elapsed
    );
    Ok(())
}
