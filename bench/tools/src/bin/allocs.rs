//! Heap allocations per credential check, in process: `Keyplane::check` — what `/v1/authz`
//! calls for every form — on a cached API key with one scope, counted by a global allocator
//! that counts only while the measuring thread runs the loop (background tasks and the
//! setup are not counted).
//!
//! `allocs [N]` (default 100000 checks) prints `allocations_per_check <x>` and
//! `bytes_per_check <y>`. BENCHMARKS.md has the figures before and after issue 15 (usage
//! counting and one rate limit on the key); the "before" build comments out the lines between
//! `limits:begin` and `limits:end`, which `rate_limits` did not exist for.

use keyplane_core::domain::clock::SystemClock;
use keyplane_core::domain::perm::Principal;
use keyplane_core::domain::request::RequestMeta;
use keyplane_core::domain::secret::Pepper;
use keyplane_core::domain::settings::Settings;
use keyplane_core::usecase::api_keys::NewApiKey;
use keyplane_core::usecase::check::Verdict;
use keyplane_core::Keyplane;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new as u64, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N"))
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("keyplane-allocs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/keyplane.db", dir.display());
    let store = keyplane_store::open(&url).await.expect("open the database");
    let pepper = Pepper::new(1, b"allocs-bench-pepper-allocs-bench-pepper").expect("pepper");
    let app = Keyplane::new(store, Arc::new(SystemClock), pepper, Settings::default());
    app.bootstrap(None).await.expect("bootstrap");
    let admin = Principal::admin();
    let meta = RequestMeta::default();
    app.service_create(&admin, "svc", None, vec!["svc:read".into()], vec![], &meta)
        .await
        .expect("service");
    let input = NewApiKey {
        scopes: vec!["svc:read".into()],
        // limits:begin
        rate_limits: vec![keyplane_core::domain::usage::RateLimit {
            name: "burst".into(),
            limit: 1_000_000_000_000,
            window: keyplane_core::domain::usage::Window::parse("1s").unwrap(),
            cost: None,
            shared: None,
        }],
        // limits:end
        ..Default::default()
    };
    let (_, secret) = app.api_key_create(&admin, input, &meta).await.expect("key");
    let key = secret.expose().to_string();
    let required = ["svc:read"];
    for _ in 0..1000 {
        assert!(matches!(
            app.check(Some(&key), None, &required, &meta).await,
            Verdict::Allow(_)
        ));
    }
    MEASURING.with(|m| m.set(true));
    for _ in 0..n {
        let v = app.check(Some(&key), None, &required, &meta).await;
        std::hint::black_box(&v);
    }
    MEASURING.with(|m| m.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let bytes = BYTES.load(Ordering::Relaxed);
    println!("checks {n}");
    println!("allocations_per_check {:.3}", allocs as f64 / n as f64);
    println!("bytes_per_check {:.1}", bytes as f64 / n as f64);
    let _ = std::fs::remove_dir_all(&dir);
}
