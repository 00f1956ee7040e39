// `@tauri-apps/api/core` for a page with no bundler: the same `invoke` and `Channel` that
// Tauri injects as `window.__TAURI__.core` (withGlobalTauri).
export const { invoke, Channel } = window.__TAURI__.core
