//! The unframed services beside the native protocol: the course's UDP time service and the
//! standard time protocols, each on the address its setting names (or off).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::ServerConfig;
use super::listener::{bind_tcp, bind_udp};
use super::stream::{StreamLimits, StreamService, StreamShutdown, serve_streams};
use super::udp::{DatagramService, RateLimit, serve_datagrams};
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
    /// `time`, `daytime`, `rfc868` or `sntp`.
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
    Tcp(TcpListener, Arc<dyn StreamService>),
}

/// One optional service: its name, the flag that sets its address, and what it speaks.
struct Spec {
    service: &'static str,
    flag: &'static str,
    addr: Option<SocketAddr>,
    stream: Option<Arc<dyn StreamService>>,
    datagram: Option<Arc<dyn DatagramService>>,
}

/// Binds every unframed service `config` turns on.
pub(super) fn bind_all(config: &ServerConfig) -> io::Result<Vec<Endpoint>> {
    let specs = [
        Spec::new("time", "time-listen", config.time_listen).udp(TimeDatagrams),
        Spec::new("daytime", "daytime-listen", config.daytime_listen)
            .tcp(Daytime)
            .udp(Daytime),
        Spec::new("rfc868", "rfc868-listen", config.rfc868_listen)
            .tcp(Rfc868Time)
            .udp(Rfc868Time),
        Spec::new("sntp", "sntp-listen", config.sntp_listen).udp(Sntp),
    ];
    let mut endpoints = Vec::new();
    for spec in specs {
        spec.bind(&mut endpoints)?;
    }
    Ok(endpoints)
}

impl Spec {
    fn new(service: &'static str, flag: &'static str, addr: Option<SocketAddr>) -> Spec {
        Spec {
            service,
            flag,
            addr,
            stream: None,
            datagram: None,
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
            endpoints.push(self.endpoint(Socket::Tcp(listener, service.clone()))?);
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
        let (service, flag) = (self.service, self.flag);
        io::Error::new(
            error.kind(),
            format!(
                "{service} service: cannot listen on {transport} {addr}: {reason} (use --{flag} ADDR or --{flag} off)"
            ),
        )
    }
}

impl Endpoint {
    pub(super) fn addr(&self) -> io::Result<ServiceAddr> {
        let (transport, addr) = match &self.socket {
            Socket::Udp(socket, _) => (Transport::Udp, socket.local_addr()?),
            Socket::Tcp(listener, _) => (Transport::Tcp, listener.local_addr()?),
        };
        Ok(ServiceAddr {
            service: self.service,
            transport,
            addr,
        })
    }

    /// Serves on `tasks` until `stopping`; connections still open past the shutdown deadline
    /// end with `abort`.
    pub(super) fn spawn(self, tasks: &TaskTracker, stopping: &CancellationToken, abort: &CancellationToken) {
        match self.socket {
            Socket::Udp(socket, service) => {
                let serve = serve_datagrams(
                    self.service,
                    socket,
                    service,
                    RateLimit::default(),
                    stopping.clone(),
                );
                tasks.spawn(serve);
            }
            Socket::Tcp(listener, service) => {
                let shutdown = StreamShutdown {
                    stopping: stopping.clone(),
                    abort: abort.clone(),
                    tasks: tasks.clone(),
                };
                let serve = serve_streams(self.service, listener, service, StreamLimits::default(), shutdown);
                tasks.spawn(serve);
            }
        }
    }
}
