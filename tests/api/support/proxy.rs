//! TCP proxies a test controls, in front of a real dependency: `TcpProxy` cuts and restores
//! its connections (an outage without stopping the shared server), `HoldProxy` holds back the
//! commands a test names (an interleaving on demand).

use std::net::SocketAddr;
use std::sync::Arc;

use super::WAIT;

/// A TCP proxy the test controls, to cut a dependency's connections and restore them (an
/// outage without stopping the shared server). While cut, live connections are closed and new
/// ones are accepted and closed at once.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(tokio::sync::watch::Sender::new(true));
        let task = tokio::spawn({
            let up = up.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !*up.borrow() {
                        drop(inbound);
                        continue;
                    }
                    let mut cut = up.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.wait_for(|up| !*up) => {}
                        }
                    });
                }
            }
        });
        TcpProxy { addr, up, task }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// A TCP proxy that can hold back the commands a test names: while holding, every
/// client-to-server chunk that contains `pattern` (a Redis command name, say; compared without
/// case) waits in the proxy until `release`. The test decides when such a command reaches the
/// server, which makes an interleaving that timing would rarely produce happen every time.
pub struct HoldProxy {
    pub addr: SocketAddr,
    holding: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<tokio::sync::watch::Sender<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    pub async fn start(target: SocketAddr, pattern: &'static str) -> HoldProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let holding = Arc::new(tokio::sync::watch::Sender::new(false));
        let held = Arc::new(tokio::sync::watch::Sender::new(0usize));
        let pattern = pattern.to_ascii_lowercase().into_bytes();
        let task = tokio::spawn({
            let (holding, held) = (holding.clone(), held.clone());
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let (holding, held, pattern) = (holding.clone(), held.clone(), pattern.clone());
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut in_read, mut in_write) = inbound.into_split();
                        let (mut out_read, mut out_write) = outbound.into_split();
                        let up = async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match in_read.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                let chunk = buf[..n].to_ascii_lowercase();
                                if *holding.borrow()
                                    && chunk.windows(pattern.len()).any(|w| w == pattern)
                                {
                                    held.send_modify(|n| *n += 1);
                                    let _ = holding.subscribe().wait_for(|h| !*h).await;
                                }
                                if out_write.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        let down = tokio::io::copy(&mut out_read, &mut in_write);
                        tokio::select! {
                            _ = up => {}
                            _ = down => {}
                        }
                    });
                }
            }
        });
        HoldProxy {
            addr,
            holding,
            held,
            task,
        }
    }

    /// From now on, chunks with the pattern wait.
    pub fn hold(&self) {
        self.holding.send_replace(true);
    }

    /// Waits until `n` chunks with the pattern have been held back.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.held.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|held| *held >= n))
            .await
            .expect("the held command never came")
            .unwrap();
    }

    /// Lets every held chunk through, and the later ones.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}
