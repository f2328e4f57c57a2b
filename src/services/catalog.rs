//! Every service this build offers, in one place: the native services a session routes
//! commands to ([`Registry::native`]) and the unframed ones, each on the address its setting
//! names or off ([`unframed`]). The server walks these lists and names no service itself, so
//! adding a service means writing it and adding one line here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::classic::echo::{HmacEcho, UdpUpperEcho, UpperEcho};
use super::classic::exec::{TcpExec, UdpExec};
use super::classic::ftp::Ftp;
use super::classic::greeting::Greeting;
use super::classic::{ClassicConfig, ClassicService};
use super::clock::{Daytime, Rfc868Time, Sntp};
use super::time::TimeDatagrams;
use super::unframed::{DatagramService, StreamLimits, StreamService};
use super::{Backends, Registry, chat, echo, exec, files, time};
use crate::auth::{FailureThrottle, Secret};

impl Registry {
    /// The native services this build offers.
    pub(crate) fn native(backends: &Backends) -> Registry {
        let mut registry = Registry::default();
        registry.register(echo::Echo);
        registry.register(chat::Chat::new(backends.chat));
        registry.register(time::Time);
        registry.register(exec::Exec::new(backends.exec.clone()));
        registry.register(files::Files::new(backends.files.clone()));
        registry
    }
}

/// What the unframed services take from the server's settings.
pub(crate) struct UnframedSettings<'a> {
    /// The course's UDP time service.
    pub(crate) time: Option<SocketAddr>,
    /// RFC 867 daytime, over TCP and UDP.
    pub(crate) daytime: Option<SocketAddr>,
    /// RFC 868 time, over TCP and UDP.
    pub(crate) rfc868: Option<SocketAddr>,
    /// SNTP, over UDP.
    pub(crate) sntp: Option<SocketAddr>,
    pub(crate) classic: &'a ClassicConfig,
    /// How long a classic conversation may wait for its client.
    pub(crate) idle_timeout: Duration,
    /// The classic HMAC echo's key.
    pub(crate) secret: &'a Secret,
    /// How long the classic HMAC echo waits for the answer to its challenge.
    pub(crate) handshake_timeout: Duration,
    /// Shared with the native handshake: one back-off per source for both.
    pub(crate) throttle: &'a Arc<FailureThrottle>,
}

/// One unframed service the settings turn on: its name, where it listens, how to move it,
/// and what it speaks there (TCP, UDP or both, on one port).
pub(crate) struct Unframed {
    /// `time`, `daytime`, `rfc868`, `sntp`, or a classic service's log name (`classic-echo`).
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    /// The settings that move it or turn it off, for the error when it cannot listen.
    pub(crate) how_to_move: String,
    pub(crate) stream: Option<Arc<dyn StreamService>>,
    /// How many connections its TCP side serves at once, and for how long each.
    pub(crate) limits: StreamLimits,
    pub(crate) datagram: Option<Arc<dyn DatagramService>>,
    /// What anyone who reaches it can do, if it lets anyone in: the server warns about it.
    pub(crate) exposure: Option<&'static str>,
}

/// Every unframed service `settings` turn on, in the order they are bound.
pub(crate) fn unframed(settings: &UnframedSettings, backends: &Backends) -> Vec<Unframed> {
    // In classic mode the time service is one of the course's open services.
    let time_exposure = settings.classic.enabled.then_some("answers anyone");
    let standard = [
        settings.time.map(|addr| {
            Unframed::new("time", addr, moved_by("time-listen"))
                .udp(TimeDatagrams)
                .exposed(time_exposure)
        }),
        settings.daytime.map(|addr| {
            Unframed::new("daytime", addr, moved_by("daytime-listen"))
                .tcp(Daytime)
                .udp(Daytime)
        }),
        settings.rfc868.map(|addr| {
            Unframed::new("rfc868", addr, moved_by("rfc868-listen"))
                .tcp(Rfc868Time)
                .udp(Rfc868Time)
        }),
        settings
            .sntp
            .map(|addr| Unframed::new("sntp", addr, moved_by("sntp-listen")).udp(Sntp)),
    ];
    let classic = ClassicService::ALL
        .into_iter()
        .filter_map(|service| classic(service, settings, backends));
    standard.into_iter().flatten().chain(classic).collect()
}

/// How to move or turn off a service that has a `--FLAG ADDR` of its own.
fn moved_by(flag: &str) -> String {
    format!("use --{flag} ADDR or --{flag} off")
}

/// A classic service `settings` turn on, unless it runs commands and exec is not allowed.
fn classic(service: ClassicService, settings: &UnframedSettings, backends: &Backends) -> Option<Unframed> {
    let addr = settings.classic.addr(service)?;
    if service.runs_commands() && !backends.exec.enabled() {
        warn!(
            "{service} (on {} {addr}) not started: it runs commands, so it needs --allow-exec as well",
            service.transport()
        );
        return None;
    }
    let key = service.key();
    let how_to_move = format!(
        "use --classic-listen {key}=ADDR or {key}=off, or `{key}` under [classic_listen] in the config file"
    );
    let unframed = Unframed {
        limits: StreamLimits::interactive(settings.idle_timeout),
        ..Unframed::new(service.log_name(), addr, how_to_move)
    }
    .exposed(service.exposure());
    let exec = &backends.exec;
    Some(match service {
        ClassicService::Echo => unframed.tcp(UpperEcho),
        ClassicService::Exec => unframed.tcp(TcpExec::new(exec.clone())),
        ClassicService::Ftp => unframed.tcp(Ftp::new(backends.files.clone())),
        ClassicService::HmacEcho => unframed.tcp(HmacEcho::new(
            settings.secret.clone(),
            settings.handshake_timeout,
            settings.throttle.clone(),
        )),
        ClassicService::Greeting => unframed.tcp(Greeting),
        ClassicService::UdpEcho => unframed.udp(UdpUpperEcho),
        ClassicService::UdpExec => unframed.udp(UdpExec::new(exec.clone(), settings.classic.exec_any_source)),
    })
}

impl Unframed {
    /// A service on `addr`, speaking nothing yet.
    fn new(name: &'static str, addr: SocketAddr, how_to_move: String) -> Unframed {
        Unframed {
            name,
            addr,
            how_to_move,
            stream: None,
            limits: StreamLimits::default(),
            datagram: None,
            exposure: None,
        }
    }

    fn tcp(mut self, service: impl StreamService + 'static) -> Unframed {
        self.stream = Some(Arc::new(service));
        self
    }

    fn udp(mut self, service: impl DatagramService + 'static) -> Unframed {
        self.datagram = Some(Arc::new(service));
        self
    }

    fn exposed(mut self, exposure: Option<&'static str>) -> Unframed {
        self.exposure = exposure;
        self
    }
}
