//! The benchmark's ceiling: a minimal unframed tokio upper-case echo server, no protocol, no
//! authentication, no encryption. Built as an example: `cargo run --release --example
//! tokio_echo -- 127.0.0.1:0`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9090".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                buf[..n].make_ascii_uppercase();
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}
