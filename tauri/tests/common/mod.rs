//! A mock-runtime app with the plugin, called as an app's JavaScript would call it: through
//! IPC (`plugin:tidegate|…`), past the plugin's real permission check. `mock_context` has an
//! empty ACL, so the plugin's own permission files and a capability are resolved into it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tauri::ipc::{CallbackFn, CapabilityBuilder, InvokeBody, InvokeResponseBody, RuntimeAuthority};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::utils::acl::manifest::{Manifest, PermissionFile};
use tauri::utils::acl::resolved::Resolved;
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow, WebviewWindowBuilder};

/// Every message each channel received, in order.
pub type Sent = Arc<Mutex<HashMap<u32, Vec<Value>>>>;

pub struct Harness {
    pub app: App<MockRuntime>,
    pub window: WebviewWindow<MockRuntime>,
    pub sent: Sent,
    next_channel: AtomicU32,
}

/// The plugin's manifest, from its permission files (what `tauri-build` gives an app).
fn manifest() -> Manifest {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("permissions");
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                files.push(toml::from_str::<PermissionFile>(&text).unwrap());
            }
        }
    }
    Manifest::new(files, None)
}

impl Harness {
    /// An app whose main window is granted `permissions` (say `tidegate:default`).
    pub fn new(permissions: &[&str]) -> Self {
        let sent: Sent = Arc::default();
        let seen = Arc::clone(&sent);
        let mut context = mock_context(noop_assets());
        let acl = BTreeMap::from([("tidegate".to_string(), manifest())]);
        let mut authority = RuntimeAuthority::new(acl, Resolved::default());
        let mut capability = CapabilityBuilder::new("test").window("main").local(true);
        for p in permissions {
            capability = capability.permission(*p);
        }
        authority.add_capability(capability).unwrap();
        *context.runtime_authority_mut() = authority;
        let app = mock_builder()
            .plugin(tauri_plugin_tidegate::init())
            .channel_interceptor(move |_webview, callback: CallbackFn, _index, body| {
                if let InvokeResponseBody::Json(json) = body {
                    let value: Value = serde_json::from_str(json).unwrap();
                    seen.lock()
                        .unwrap()
                        .entry(callback.0)
                        .or_default()
                        .push(value);
                }
                true
            })
            .build(context)
            .unwrap();
        let window = WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        Harness {
            app,
            window,
            sent,
            next_channel: AtomicU32::new(1),
        }
    }

    /// A new channel argument, and its id.
    pub fn channel(&self) -> (Value, u32) {
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        (Value::String(format!("__CHANNEL__:{id}")), id)
    }

    /// Calls `plugin:tidegate|<command>` with `args`, as JavaScript's `invoke` does.
    pub fn invoke(&self, command: &str, args: Value) -> Result<Value, Value> {
        let request = InvokeRequest {
            cmd: format!("plugin:tidegate|{command}"),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        };
        get_ipc_response(&self.window, request).map(|body| body.deserialize::<Value>().unwrap())
    }

    /// The messages channel `id` has received so far.
    pub fn messages(&self, id: u32) -> Vec<Value> {
        self.sent
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (at most 60 s) for channel `id` to receive an event named `name`.
    pub fn wait_for(&self, id: u32, name: &str) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let got = self.messages(id);
            if got.iter().any(|m| m["event"] == name) {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {name} event: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Jobs held in the plugin's state.
    pub fn jobs(&self) -> usize {
        self.app.state::<tauri_plugin_tidegate::Jobs>().len()
    }

    /// Waits until no job is held (an ended job leaves a moment after its last event).
    pub fn wait_idle(&self) {
        let start = Instant::now();
        while self.jobs() != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "jobs left: {}",
                self.jobs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
