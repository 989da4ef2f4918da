//! epoll + recvmmsg back end (placeholder until implemented).
use super::*;
pub struct EpollBackend;
impl EpollBackend {
    pub fn new(_cfg: BackendConfig) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "epoll back end not built yet"))
    }
}
impl Backend for EpollBackend {
    fn kind(&self) -> BackendKind { BackendKind::Epoll }
    fn add_socket(&mut self, _token: Token, _socket: UdpSocket) -> io::Result<()> { unimplemented!() }
    fn remove_socket(&mut self, _token: Token) -> io::Result<()> { unimplemented!() }
    fn poll(&mut self, _timeout: Duration, _f: &mut dyn FnMut(Datagram<'_>)) -> io::Result<usize> { unimplemented!() }
    fn shutdown(&mut self) {}
}
