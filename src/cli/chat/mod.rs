//! `sockit chat`: the terminal chat client, `--send` for scripts, and (`--serve-udp`) the
//! course's UDP chat console.
//!
//! The prompt runs on this thread (rustyline, blocking); the event feed runs on a runtime
//! worker and prints through rustyline's external printer, which redraws the input line below
//! each incoming message instead of garbling it.

mod udp;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rustyline::DefaultEditor;
use sockit::client::{ChatFeed, ChatIncoming, ChatSender, ChatSession};
use sockit::proto::chat::{ChatEvent, DEFAULT_ROOM};
use sockit::text::escape;
use sockit::{Client, ClientConfig};

use super::shared::{ClientArgs, EXIT_FAILURE, client_runtime, print_line, prompt_line};
use udp::Lang;

#[derive(Args)]
#[command(
    about = "Chat with others on a server: rooms, direct messages, history",
    after_help = "Examples:\n  sockit chat localhost --name alice             # interactive, room `lobby`\n  sockit chat localhost --name bot --room ops --send 'deploy done'\n  sockit chat --serve-udp 127.0.0.1:8081          # the course's UDP chat console\n\nCommands in the interactive client:\n  /join ROOM  /leave [ROOM]  /msg NICK TEXT  /who [ROOM [AFTER]]  /rooms [AFTER]  /help  /quit"
)]
pub struct ChatArgs {
    /// Server as HOST[:PORT]
    #[arg(required_unless_present = "serve_udp")]
    target: Option<String>,
    /// Your nickname (unique on the server)
    #[arg(long, short, required_unless_present = "serve_udp")]
    name: Option<String>,
    /// Room to join first
    #[arg(long, short, default_value = DEFAULT_ROOM)]
    room: String,
    /// Post TEXT to the room (or to --to) and exit
    #[arg(long, value_name = "TEXT")]
    send: Option<String>,
    /// With --send: a direct message to NICK instead
    #[arg(long, value_name = "NICK", requires = "send")]
    to: Option<String>,
    /// Run the course's UDP chat console on ADDR: print each datagram, answer it by hand
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["target", "name", "send"])]
    serve_udp: Option<SocketAddr>,
    /// Language of the UDP console's lines
    #[arg(long, value_enum, default_value = "zh")]
    lang: Lang,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.serve_udp {
        return udp::run(addr, args.lang);
    }
    let (Some(target), Some(name)) = (&args.target, &args.name) else {
        bail!("a server and --name are needed");
    };
    let config = args.client.config()?;
    match &args.send {
        Some(text) => send_once(target, &config, name, &args, text),
        None => interactive(target, &config, name, &args.room),
    }
}

async fn login(target: &str, config: &ClientConfig, name: &str) -> anyhow::Result<ChatSession> {
    let client = Client::connect(target, config).await?;
    Ok(client.chat_login(name).await?)
}

/// Posts one message and waits until the server has delivered it back to us, so exit status
/// 0 means the others have it queued.
fn send_once(
    target: &str,
    config: &ClientConfig,
    name: &str,
    args: &ChatArgs,
    text: &str,
) -> anyhow::Result<ExitCode> {
    let runtime = client_runtime()?;
    runtime.block_on(async {
        let ChatSession {
            mut sender,
            mut feed,
            name,
        } = login(target, config, name).await?;
        let id = match &args.to {
            Some(to) => sender.direct(to, text).await?,
            None => {
                sender.join(&args.room).await?;
                sender.say(&args.room, text).await?
            }
        };
        let delivered = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(incoming) = feed.next().await? {
                match incoming {
                    ChatIncoming::Refused { error, .. } => bail!("{error}"),
                    ChatIncoming::Event { event, .. } if is_own(&event, &name, text) => return Ok(()),
                    ChatIncoming::Event { .. } => {}
                }
            }
            bail!("the server closed the connection before delivering message {id}")
        });
        delivered.await.context("no delivery receipt within 30 s")??;
        sender.quit().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn is_own(event: &ChatEvent, me: &str, text: &str) -> bool {
    match event {
        ChatEvent::Message {
            from,
            text: said,
            replay: false,
            ..
        }
        | ChatEvent::Direct { from, text: said, .. } => from == me && said == text,
        _ => false,
    }
}

fn interactive(target: &str, config: &ClientConfig, name: &str, room: &str) -> anyhow::Result<ExitCode> {
    // A worker thread runs the feed while this thread waits in the prompt.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let ChatSession {
        mut sender,
        feed,
        name,
    } = runtime.block_on(login(target, config, name))?;
    let terminal = TerminalGuard::save();
    let mut editor = DefaultEditor::new()?;
    let print = printer(&mut editor);
    // Set when we leave on purpose, so the feed ending then is not reported as a failure.
    let leaving = Arc::new(AtomicBool::new(false));
    runtime.spawn(show_feed(feed, print, Style::detect(), terminal, leaving.clone()));
    eprintln!(
        "connected to {target} as {}; /help lists commands, /quit leaves",
        escape(&name)
    );
    let mut rooms = Rooms::default();
    runtime.block_on(rooms.join(&mut sender, room))?;
    loop {
        let prompt = match rooms.current() {
            Some(room) => format!("#{}> ", escape(room)),
            None => "> ".to_owned(),
        };
        let Some(line) = prompt_line(&mut editor, &prompt)? else {
            break;
        };
        match runtime.block_on(rooms.run_line(&mut sender, &line)) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => eprintln!("sockit: {error:#}"),
        }
    }
    leaving.store(true, Ordering::SeqCst);
    runtime.block_on(sender.quit());
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(ExitCode::SUCCESS)
}

/// The rooms this client is in, and the one plain lines go to.
#[derive(Default)]
struct Rooms {
    joined: Vec<String>,
}

const HELP: &str = "/join ROOM · /leave [ROOM] · /msg NICK TEXT · /who [ROOM [AFTER]] · /rooms [AFTER] · /quit; other lines go to the current room";

impl Rooms {
    fn current(&self) -> Option<&str> {
        self.joined.last().map(String::as_str)
    }

    async fn join(&mut self, sender: &mut ChatSender, room: &str) -> anyhow::Result<()> {
        sender.join(room).await?;
        self.joined.retain(|joined| joined != room);
        self.joined.push(room.to_owned());
        Ok(())
    }

    /// Runs one typed line; `false` means quit.
    async fn run_line(&mut self, sender: &mut ChatSender, line: &str) -> anyhow::Result<bool> {
        let Some(command) = line.strip_prefix('/') else {
            let Some(room) = self.current() else {
                bail!("you are in no room: /join one first");
            };
            sender.say(room, line).await?;
            return Ok(true);
        };
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = rest.trim();
        let current = self.current().map(str::to_owned);
        let room_or_current = || {
            Some(rest.to_owned())
                .filter(|room| !room.is_empty())
                .or(current.clone())
                .context("name a room: you are in none")
        };
        match verb {
            "quit" | "exit" => return Ok(false),
            "join" if !rest.is_empty() => self.join(sender, rest).await?,
            "leave" => {
                let room = room_or_current()?;
                sender.leave(&room).await?;
                self.joined.retain(|joined| *joined != room);
            }
            "msg" => match rest.split_once(' ') {
                Some((to, text)) if !text.trim().is_empty() => {
                    sender.direct(to, text.trim()).await?;
                }
                _ => bail!("usage: /msg NICK TEXT"),
            },
            "who" => {
                let (room, after) = match rest.split_once(' ') {
                    Some((room, after)) => (room.to_owned(), Some(after.trim())),
                    None => (room_or_current()?, None),
                };
                sender.who_after(&room, after).await?;
            }
            "rooms" => {
                sender
                    .rooms_after(Some(rest).filter(|after| !after.is_empty()))
                    .await?;
            }
            _ => eprintln!("{HELP}"),
        }
        Ok(true)
    }
}

type Print = Box<dyn FnMut(String) + Send>;

/// Prints above the prompt when on a terminal, plainly otherwise.
fn printer(editor: &mut DefaultEditor) -> Print {
    use rustyline::ExternalPrinter;
    match editor.create_external_printer() {
        Ok(mut printer) if std::io::stdin().is_terminal() => Box::new(move |line| {
            let _ = printer.print(format!("{line}\n"));
        }),
        _ => Box::new(print_line),
    }
}

async fn show_feed(
    mut feed: ChatFeed,
    mut print: Print,
    style: Style,
    terminal: TerminalGuard,
    leaving: Arc<AtomicBool>,
) {
    let ending = loop {
        match feed.next().await {
            Ok(Some(ChatIncoming::Event { event, .. })) => {
                if let ChatEvent::Dropped { reason } = &event {
                    break format!("dropped by the server: {}", escape(reason));
                }
                if let Some(line) = style.render(&event) {
                    print(line);
                }
            }
            Ok(Some(ChatIncoming::Refused { error, .. })) => {
                print(format!("sockit: {}", escape(&error.to_string())))
            }
            Ok(None) => break "the server closed the connection".to_owned(),
            Err(error) => break error.to_string(),
        }
    };
    if leaving.load(Ordering::SeqCst) {
        return;
    }
    // The prompt is blocked reading the terminal: restore it and leave from here.
    terminal.restore();
    eprintln!("\nsockit: {ending}");
    std::process::exit(i32::from(EXIT_FAILURE));
}

/// How events look: sender tags in the course's colours when stdout is a colour terminal.
#[derive(Clone, Copy)]
struct Style {
    colour: bool,
}

impl Style {
    fn detect() -> Style {
        let dumb = std::env::var("TERM").is_ok_and(|term| term == "dumb");
        let colour = std::io::stdout().is_terminal() && !dumb && std::env::var_os("NO_COLOR").is_none();
        Style { colour }
    }

    fn tag(&self, name: &str) -> String {
        let name = escape(name);
        if self.colour {
            format!("\x1b[1;44m{name}\x1b[0m")
        } else {
            name
        }
    }

    fn render(&self, event: &ChatEvent) -> Option<String> {
        Some(match event {
            ChatEvent::Message {
                room,
                from,
                time,
                text,
                replay,
            } => {
                let when = local_time(time, *replay);
                format!("{when} #{} {}: {}", escape(room), self.tag(from), escape(text))
            }
            ChatEvent::Direct { from, to, time, text } => {
                let when = local_time(time, false);
                format!("{when} [{} → {}] {}", self.tag(from), escape(to), escape(text))
            }
            ChatEvent::Join { room, name, time } => {
                format!(
                    "{} #{} * {} joined",
                    local_time(time, false),
                    escape(room),
                    escape(name)
                )
            }
            ChatEvent::Leave {
                room,
                name,
                time,
                reason,
            } => {
                let why = reason
                    .as_deref()
                    .map(|r| format!(" ({})", escape(r)))
                    .unwrap_or_default();
                format!(
                    "{} #{} * {} left{why}",
                    local_time(time, false),
                    escape(room),
                    escape(name)
                )
            }
            ChatEvent::Members {
                room,
                members,
                total,
                next,
            } => {
                let names: Vec<String> = members.iter().map(|m| escape(m)).collect();
                let more = more_hint(next.as_deref(), &format!("/who {} ", escape(room)));
                format!(
                    "#{}: {} online: {}{more}",
                    escape(room),
                    (*total).max(members.len()),
                    names.join(", ")
                )
            }
            ChatEvent::Left { room } => format!("you left #{}", escape(room)),
            ChatEvent::Rooms { rooms, total, next } => {
                let count = (*total).max(rooms.len());
                let rooms: Vec<String> = rooms
                    .iter()
                    .map(|room| format!("#{} ({})", escape(&room.name), room.members))
                    .collect();
                let more = more_hint(next.as_deref(), "/rooms ");
                format!("{count} rooms: {}{more}", rooms.join(", "))
            }
            ChatEvent::Welcome { .. } | ChatEvent::Dropped { .. } => return None,
        })
    }
}

/// How to ask for the next page of a paged answer, if there is one.
fn more_hint(next: Option<&str>, command: &str) -> String {
    next.map(|after| format!(" … ({command}{} for more)", escape(after)))
        .unwrap_or_default()
}

/// `HH:MM` in local time; history shows the date too.
fn local_time(rfc3339: &str, with_date: bool) -> String {
    let Ok(time) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return "--:--".to_owned();
    };
    let local = time.with_timezone(&chrono::Local);
    local
        .format(if with_date { "%m-%d %H:%M" } else { "%H:%M" })
        .to_string()
}

/// The terminal's settings before rustyline switched it to raw mode, to put back if we must
/// exit while the prompt is waiting.
struct TerminalGuard(Option<rustix::termios::Termios>);

impl TerminalGuard {
    fn save() -> TerminalGuard {
        TerminalGuard(rustix::termios::tcgetattr(std::io::stdin()).ok())
    }

    fn restore(&self) {
        if let Some(settings) = &self.0 {
            let _ =
                rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, settings);
        }
    }
}
