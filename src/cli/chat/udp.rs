//! `sockit chat --serve-udp ADDR`: the course's UDP "QQ chat" server as an operator console.
//!
//! As in the course, it waits for a datagram, prints it with its sender, then waits for the
//! operator's typed reply and sends it back to that sender. Unlike the course, a message is
//! shown with its control characters escaped, and any bytes (not only UTF-8) are accepted.

use std::io::IsTerminal;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use sockit::text::escape;

use crate::cli::shared::print_line;

/// The language of the console's lines: the course's Chinese, or English.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Lang {
    Zh,
    En,
}

pub fn run(addr: SocketAddr, lang: Lang) -> anyhow::Result<ExitCode> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("cannot listen on udp {addr}"))?;
    eprintln!("chat console on udp {}; Ctrl-D leaves", socket.local_addr()?);
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut editor = DefaultEditor::new()?;
    // The largest UDP payload: a message is never cut, unlike the course's recvfrom(1024).
    let mut buffer = vec![0; 65_535];
    loop {
        let (len, from) = socket.recv_from(&mut buffer)?;
        let text = escape(&String::from_utf8_lossy(&buffer[..len]));
        print_line(incoming(lang, from, &text, colour));
        let reply = match editor.readline(reply_prompt(lang)) {
            Ok(reply) => reply,
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => break,
            Err(error) => return Err(error.into()),
        };
        let reply = reply.trim();
        let _ = editor.add_history_entry(reply);
        if let Err(error) = socket.send_to(reply.as_bytes(), from) {
            eprintln!("sockit: cannot answer {from}: {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The course's line: `来自[ip:port]的一条消息:` and the message on a blue background.
fn incoming(lang: Lang, from: SocketAddr, text: &str, colour: bool) -> String {
    let text = if colour {
        format!("\x1b[1;44m{text}\x1b[0m")
    } else {
        text.to_owned()
    };
    let (ip, port) = (from.ip(), from.port());
    match lang {
        Lang::Zh => format!("来自[{ip}:{port}]的一条消息:{text}"),
        Lang::En => format!("message from [{ip}:{port}]: {text}"),
    }
}

fn reply_prompt(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "回复消息: ",
        Lang::En => "reply: ",
    }
}
