//! The unframed services beside the native protocol: the course's UDP time service, the
//! standard time protocols and the classic services, each on the address its setting names
//! (or off).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::ServerConfig;
use super::listener::{bind_tcp, bind_udp};
use super::stream::{ServiceShutdown, StreamLimits, StreamService, serve_streams};
use super::udp::{DatagramService, OwnPorts, RateLimit, serve_datagrams};
use crate::auth::FailureThrottle;
use crate::services::Backends;
use crate::services::classic::echo::{HmacEcho, UdpUpperEcho, UpperEcho};
use crate::services::classic::exec::{TcpExec, UdpExec};
use crate::services::classic::ftp::Ftp;
use crate::services::classic::greeting::Greeting;
use crate::services::classic::{ClassicService, is_loopback};
use crate::services::clock::{Daytime, Rfc868Time, Sntp};
use crate::services::time::TimeDatagrams;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// Where one of the unframed services was bound (with the port chosen for port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceAddr {
    /// `time`, `daytime`, `rfc868`, `sntp`, or a classic service's log name (`classic-echo`).
    pub service: &'static str,
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// A bound socket and the service that answers on it.
pub(super) struct Endpoint {
    service: &'static str,
    socket: Socket,
}

enum Socket {
    Udp(UdpSocket, Arc<dyn DatagramService>),
    Tcp(TcpListener, Arc<dyn StreamService>, StreamLimits),
}

/// One optional service: its name, how to move it, and what it speaks.
struct Spec {
    service: &'static str,
    /// The flags that move it or turn it off, for the error when it cannot listen.
    how_to_move: String,
    addr: Option<SocketAddr>,
    stream: Option<Arc<dyn StreamService>>,
    limits: StreamLimits,
    datagram: Option<Arc<dyn DatagramService>>,
    /// What anyone who reaches it can do, if it lets anyone in: logged as a warning.
    exposure: Option<&'static str>,
}

/// The UDP ports `endpoints` are bound to, which none of them answers.
pub(super) fn own_ports(endpoints: &[Endpoint]) -> OwnPorts {
    let udp = endpoints.iter().filter_map(|endpoint| match &endpoint.socket {
        Socket::Udp(socket, _) => socket.local_addr().ok().map(|addr| addr.port()),
        Socket::Tcp(..) => None,
    });
    OwnPorts::new(udp)
}

/// Binds every unframed service `config` turns on.
pub(super) fn bind_all(
    config: &ServerConfig,
    backends: &Backends,
    throttle: &Arc<FailureThrottle>,
) -> io::Result<Vec<Endpoint>> {
    let mut time = Spec::new("time", "time-listen", config.time_listen).udp(TimeDatagrams);
    if config.classic.enabled {
        // In classic mode the time service is one of the course's open services.
        time.exposure = Some("answers anyone");
    }
    let mut specs = vec![
        time,
        Spec::new("daytime", "daytime-listen", config.daytime_listen)
            .tcp(Daytime)
            .udp(Daytime),
        Spec::new("rfc868", "rfc868-listen", config.rfc868_listen)
            .tcp(Rfc868Time)
            .udp(Rfc868Time),
        Spec::new("sntp", "sntp-listen", config.sntp_listen).udp(Sntp),
    ];
    specs.extend(
        ClassicService::ALL
            .into_iter()
            .filter_map(|service| classic_spec(service, config, backends, throttle)),
    );
    let mut endpoints = Vec::new();
    for spec in specs {
        spec.bind(&mut endpoints)?;
    }
    Ok(endpoints)
}

/// A classic service `config` turns on, unless it runs commands and exec is not allowed.
fn classic_spec(
    service: ClassicService,
    config: &ServerConfig,
    backends: &Backends,
    throttle: &Arc<FailureThrottle>,
) -> Option<Spec> {
    let addr = config.classic.addr(service)?;
    if service.runs_commands() && !backends.exec.enabled() {
        warn!(
            "{service} (on {} {addr}) not started: it runs commands, so it needs --allow-exec as well",
            service.transport()
        );
        return None;
    }
    let key = service.key();
    let spec = Spec {
        service: service.log_name(),
        how_to_move: format!(
            "use --classic-listen {key}=ADDR or {key}=off, or `{key}` under [classic_listen] in the config file"
        ),
        addr: Some(addr),
        stream: None,
        limits: StreamLimits::interactive(config.idle_timeout),
        datagram: None,
        exposure: service.exposure(),
    };
    let exec = &backends.exec;
    Some(match service {
        ClassicService::Echo => spec.tcp(UpperEcho),
        ClassicService::Exec => spec.tcp(TcpExec::new(exec.clone())),
        ClassicService::Ftp => spec.tcp(Ftp::new(backends.files.clone())),
        ClassicService::HmacEcho => spec.tcp(HmacEcho::new(
            config.secret.clone(),
            config.handshake_timeout,
            throttle.clone(),
        )),
        ClassicService::Greeting => spec.tcp(Greeting),
        ClassicService::UdpEcho => spec.udp(UdpUpperEcho),
        ClassicService::UdpExec => spec.udp(UdpExec::new(exec.clone(), config.classic.exec_any_source)),
    })
}

impl Spec {
    fn new(service: &'static str, flag: &'static str, addr: Option<SocketAddr>) -> Spec {
        Spec {
            service,
            how_to_move: format!("use --{flag} ADDR or --{flag} off"),
            addr,
            stream: None,
            limits: StreamLimits::default(),
            datagram: None,
            exposure: None,
        }
    }

    fn tcp(mut self, service: impl StreamService + 'static) -> Spec {
        self.stream = Some(Arc::new(service));
        self
    }

    fn udp(mut self, service: impl DatagramService + 'static) -> Spec {
        self.datagram = Some(Arc::new(service));
        self
    }

    fn bind(self, endpoints: &mut Vec<Endpoint>) -> io::Result<()> {
        let Some(mut addr) = self.addr else {
            return Ok(());
        };
        if let Some(service) = &self.stream {
            let listener = bind_tcp(addr).map_err(|e| self.bind_error(Transport::Tcp, addr, e))?;
            // For port 0, UDP takes the port TCP was given: one service, one port.
            addr = listener.local_addr()?;
            endpoints.push(self.endpoint(Socket::Tcp(listener, service.clone(), self.limits))?);
        }
        if let Some(service) = &self.datagram {
            let socket = bind_udp(addr).map_err(|e| self.bind_error(Transport::Udp, addr, e))?;
            endpoints.push(self.endpoint(Socket::Udp(socket, service.clone()))?);
        }
        Ok(())
    }

    fn endpoint(&self, socket: Socket) -> io::Result<Endpoint> {
        let endpoint = Endpoint {
            service: self.service,
            socket,
        };
        let bound = endpoint.addr()?;
        // Never "listening on": scripts and tests read that for the native address.
        info!("{} service on {} {}", bound.service, bound.transport, bound.addr);
        if let Some(exposure) = self.exposure {
            let reach = match is_loopback(bound.addr.ip()) {
                true => "anyone on this machine",
                false => "anyone who can reach this address",
            };
            warn!(
                "{} on {} {} has no authentication and no encryption; {reach} can use it: it {exposure}",
                bound.service, bound.transport, bound.addr
            );
        }
        Ok(endpoint)
    }

    fn bind_error(&self, transport: Transport, addr: SocketAddr, error: io::Error) -> io::Error {
        let reason = match error.kind() {
            io::ErrorKind::AddrInUse => "address in use".to_owned(),
            io::ErrorKind::AddrNotAvailable => "no such address on this machine".to_owned(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
            }
            _ => error.to_string(),
        };
        let (service, how_to_move) = (self.service, &self.how_to_move);
        io::Error::new(
            error.kind(),
            format!("{service} service: cannot listen on {transport} {addr}: {reason} ({how_to_move})"),
        )
    }
}

impl Endpoint {
    pub(super) fn addr(&self) -> io::Result<ServiceAddr> {
        let (transport, addr) = match &self.socket {
            Socket::Udp(socket, _) => (Transport::Udp, socket.local_addr()?),
            Socket::Tcp(listener, _, _) => (Transport::Tcp, listener.local_addr()?),
        };
        Ok(ServiceAddr {
            service: self.service,
            transport,
            addr,
        })
    }

    /// Serves on `tasks` until `stopping`; connections still open past the shutdown deadline
    /// end with `abort`. Datagrams from `own_ports` go unanswered.
    pub(super) fn spawn(
        self,
        tasks: &TaskTracker,
        stopping: &CancellationToken,
        abort: &CancellationToken,
        own_ports: &OwnPorts,
    ) {
        let shutdown = ServiceShutdown {
            stopping: stopping.clone(),
            abort: abort.clone(),
            tasks: tasks.clone(),
        };
        match self.socket {
            Socket::Udp(socket, service) => {
                let limit = RateLimit::default();
                let serve =
                    serve_datagrams(self.service, socket, service, limit, own_ports.clone(), shutdown);
                tasks.spawn(serve);
            }
            Socket::Tcp(listener, service, limits) => {
                let serve = serve_streams(self.service, listener, service, limits, shutdown);
                tasks.spawn(serve);
            }
        }
    }
}
