//! A local stand-in for the upstream APIs: serves genuine fixture bodies and scripted faults
//! (429 with Retry-After, 500, a hang, truncated JSON, an HTML page, 401), records every
//! request, and honours `If-None-Match`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (a hang, when longer than the client's timeout).
    pub delay: Duration,
    /// Serve with this ETag and answer 304 to a matching If-None-Match.
    pub etag: Option<String>,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
            etag: None,
        }
    }
    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            ..Reply::ok(body)
        }
    }
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    pub fn with_etag(mut self, etag: &str) -> Reply {
        self.etag = Some(etag.to_owned());
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// What the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub status: u16,
}

#[derive(Default)]
struct Routes {
    /// Per path: replies consumed in order; the last one repeats forever.
    scripts: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
}

/// The running server; stops with the test process.
#[derive(Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    routes: Arc<Mutex<Routes>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let state = Arc::clone(&routes);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(answer).with_state(state);
                axum::serve(listener, app).await.expect("upstream serves");
            });
        });
        Upstream { address, routes }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Replaces the script of `path` (or of `path?query`, matched exactly).
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        let mut routes = self.routes.lock().unwrap();
        routes.scripts.insert(path.to_owned(), replies.into());
    }

    /// Every request, in arrival order.
    pub fn seen_all(&self) -> Vec<Seen> {
        self.routes.lock().unwrap().seen.clone()
    }

    /// Requests for `path` with exactly `query`.
    pub fn seen_query(&self, path: &str, query: &str) -> Vec<Seen> {
        self.seen(path)
            .into_iter()
            .filter(|seen| seen.query == query)
            .collect()
    }

    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.routes
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|seen| seen.path == path)
            .cloned()
            .collect()
    }
}

async fn answer(
    State(routes): State<Arc<Mutex<Routes>>>,
    request: Request<Body>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let headers = request.headers().clone();
    let reply = {
        let mut routes = routes.lock().unwrap();
        // A script keyed by "path?query" wins over one keyed by the path alone.
        let key = format!("{path}?{query}");
        let key = if routes.scripts.contains_key(&key) {
            key
        } else {
            path.clone()
        };
        match routes.scripts.get_mut(&key) {
            Some(script) if script.len() > 1 => script.pop_front(),
            Some(script) => script.front().cloned(),
            None => None,
        }
    };
    let Some(reply) = reply else {
        let mut routes = routes.lock().unwrap();
        routes.seen.push(Seen {
            at: Instant::now(),
            path,
            query,
            headers,
            status: 404,
        });
        return Response::builder()
            .status(404)
            .body(Body::from("no such fixture"))
            .unwrap();
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let not_modified = reply.etag.as_deref().is_some_and(|etag| {
        headers
            .get("if-none-match")
            .and_then(|value| value.to_str().ok())
            == Some(etag)
    });
    let status = if not_modified { 304 } else { reply.status };
    routes.lock().unwrap().seen.push(Seen {
        at: Instant::now(),
        path,
        query,
        headers,
        status,
    });
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    if let Some(etag) = &reply.etag {
        response = response.header("etag", etag);
    }
    let body = if not_modified {
        Body::empty()
    } else {
        Body::from(reply.body)
    };
    response.body(body).unwrap()
}
