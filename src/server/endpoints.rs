//! The unframed services beside the native protocol (the course's UDP time service, the
//! standard time protocols and the classic services), as the services' catalog lists them:
//! bound each on the address its setting names, announced, and served until shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tracing::{Instrument, error_span, info, warn};

use super::ServerConfig;
use super::accept::Shutdown;
use super::listener::{bind_tcp, bind_udp};
use super::stream::serve_streams;
use super::udp::{OwnPorts, RateLimit, serve_datagrams};
use crate::auth::FailureThrottle;
use crate::services::Backends;
use crate::services::catalog::{self, Unframed, UnframedSettings};
use crate::services::classic::is_loopback;
use crate::services::unframed::{DatagramService, StreamLimits, StreamService, Transport};

/// Where one of the unframed services was bound (with the port chosen for port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceAddr {
    /// `time`, `daytime`, `rfc868`, `sntp`, or a classic service's log name (`classic-echo`).
    pub service: &'static str,
    /// TCP or UDP.
    pub transport: Transport,
    /// The address bound, with the port chosen for port 0.
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

/// The UDP ports `endpoints` are bound to, which none of them answers.
pub(super) fn own_ports(endpoints: &[Endpoint]) -> OwnPorts {
    let udp = endpoints.iter().filter_map(|endpoint| match &endpoint.socket {
        Socket::Udp(socket, _) => socket.local_addr().ok().map(|addr| addr.port()),
        Socket::Tcp(..) => None,
    });
    OwnPorts::new(udp)
}

/// Binds every unframed service of the catalog that `config` turns on.
pub(super) fn bind_all(
    config: &ServerConfig,
    backends: &Backends,
    throttle: &Arc<FailureThrottle>,
) -> io::Result<Vec<Endpoint>> {
    let settings = UnframedSettings {
        time: config.time_listen,
        daytime: config.daytime_listen,
        rfc868: config.rfc868_listen,
        sntp: config.sntp_listen,
        classic: &config.classic,
        idle_timeout: config.idle_timeout,
        secret: &config.secret,
        handshake_timeout: config.handshake_timeout,
        throttle,
    };
    let mut endpoints = Vec::new();
    for service in catalog::unframed(&settings, backends) {
        bind(&service, &mut endpoints)?;
    }
    Ok(endpoints)
}

/// Binds `service`'s TCP side, then its UDP side on the same port.
fn bind(service: &Unframed, endpoints: &mut Vec<Endpoint>) -> io::Result<()> {
    let mut addr = service.addr;
    if let Some(stream) = &service.stream {
        let listener = bind_tcp(addr).map_err(|e| bind_error(service, Transport::Tcp, addr, e))?;
        // For port 0, UDP takes the port TCP was given: one service, one port.
        addr = listener.local_addr()?;
        let socket = Socket::Tcp(listener, stream.clone(), service.limits);
        endpoints.push(endpoint(service, socket)?);
    }
    if let Some(datagram) = &service.datagram {
        let socket = bind_udp(addr).map_err(|e| bind_error(service, Transport::Udp, addr, e))?;
        endpoints.push(endpoint(service, Socket::Udp(socket, datagram.clone()))?);
    }
    Ok(())
}

/// The endpoint of a bound socket, announced in the log (with a warning if anyone may use it).
fn endpoint(service: &Unframed, socket: Socket) -> io::Result<Endpoint> {
    let endpoint = Endpoint {
        service: service.name,
        socket,
    };
    let bound = endpoint.addr()?;
    // Never "listening on": scripts and tests read that for the native address.
    info!("{} service on {} {}", bound.service, bound.transport, bound.addr);
    if let Some(exposure) = service.exposure {
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

fn bind_error(service: &Unframed, transport: Transport, addr: SocketAddr, error: io::Error) -> io::Error {
    let reason = match error.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "no such address on this machine".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        _ => error.to_string(),
    };
    let (name, how_to_move) = (service.name, &service.how_to_move);
    io::Error::new(
        error.kind(),
        format!("{name} service: cannot listen on {transport} {addr}: {reason} ({how_to_move})"),
    )
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

    /// Serves until shutdown begins. Datagrams from `own_ports` go unanswered.
    pub(super) fn spawn(self, shutdown: &Shutdown, own_ports: &OwnPorts) {
        let tasks = &shutdown.tasks;
        match self.socket {
            Socket::Udp(socket, service) => {
                let (limit, own_ports) = (RateLimit::default(), own_ports.clone());
                let serve =
                    serve_datagrams(self.service, socket, service, limit, own_ports, shutdown.clone());
                // In a span naming the service, as a connection's (see `accept`).
                tasks.spawn(serve.instrument(error_span!("datagrams", service = self.service)));
            }
            Socket::Tcp(listener, service, limits) => {
                tasks.spawn(serve_streams(
                    self.service,
                    listener,
                    service,
                    limits,
                    shutdown.clone(),
                ));
            }
        }
    }
}
