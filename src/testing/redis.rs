//! A `redis-server` for tests: started on a free 127.0.0.1 port with no persistence,
//! or the one `REDIS_URL` names.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A Redis server a test uses: its own `redis-server` child process (killed on drop),
/// or the server `REDIS_URL` points at.
///
/// [`start`](RedisServer::start) returns `None`, after printing one
/// `skipped: no redis-server` line, when neither is possible; with
/// `RATEWISE_REQUIRE_REDIS=1` (CI sets it) it panics instead, so CI never skips.
#[derive(Debug)]
pub struct RedisServer {
    url: String,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// The server for this test, or `None` (skipped) when there is none.
    pub fn start() -> Option<RedisServer> {
        if let Ok(url) = std::env::var("REDIS_URL") {
            if !url.is_empty() {
                return Some(RedisServer {
                    url,
                    port: 0,
                    child: None,
                });
            }
        }
        match Self::spawn_on(free_port().ok()?) {
            Ok(server) => Some(server),
            Err(err) => {
                if std::env::var("RATEWISE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                    panic!("RATEWISE_REQUIRE_REDIS=1 but redis-server could not start: {err}");
                }
                println!("skipped: no redis-server ({err})");
                None
            }
        }
    }

    fn spawn_on(port: u16) -> io::Result<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = RedisServer {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            child: Some(child),
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if ping(addr).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!("redis-server exited: {status}")));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(
            "redis-server did not answer PING within 10 s",
        ))
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this test started the server itself (and so can stop and restart it).
    pub fn is_own(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (its data goes with it). Only for a server this test started.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, after [`kill`](Self::kill).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let mut again = Self::spawn_on(self.port)?;
        // `again` must not kill it on drop.
        self.child = again.child.take();
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ping(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(io::Error::other("unexpected PING answer"))
    }
}
