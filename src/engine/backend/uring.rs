//! io_uring back end (placeholder until implemented).
use super::*;
pub struct UringBackend;
impl UringBackend {
    pub fn new(_cfg: BackendConfig) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring back end not built yet"))
    }
}
impl Backend for UringBackend {
    fn kind(&self) -> BackendKind { BackendKind::IoUring }
    fn add_socket(&mut self, _token: Token, _socket: UdpSocket) -> io::Result<()> { unimplemented!() }
    fn remove_socket(&mut self, _token: Token) -> io::Result<()> { unimplemented!() }
    fn poll(&mut self, _timeout: Duration, _f: &mut dyn FnMut(Datagram<'_>)) -> io::Result<usize> { unimplemented!() }
    fn shutdown(&mut self) {}
}
