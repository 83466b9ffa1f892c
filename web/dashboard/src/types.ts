// The store's records as `up` sends them (src/innerloop/engine/store.py, dataclasses.asdict).

export interface Replica {
  pod: string;
  state: string; // connecting | syncing | in sync | reconnecting
  syncs: number;
  files_synced: number;
  last_sync_ms: number | null;
  last_restart_ms: number | null;
  synced_at: number | null;
  message: string;
}

export interface Service {
  name: string;
  phase: string; // pending | building | deploying | running | syncing | error
  pod: string;
  message: string;
  image: string;
  syncs: number;
  files_synced: number;
  last_sync_ms: number | null;
  last_restart_ms: number | null;
  forwards: string[];
  replicas: Record<string, Replica>;
  sync_paused: boolean;
  intercepts: string[];
  debug: string;
  dev_mode: boolean;
  updated_at: number;
}

export interface LogEntry {
  service: string;
  pod: string;
  text: string;
  at: number;
}

export interface TimelineEvent {
  service: string;
  kind: string;
  message: string;
  at: number;
  pod: string;
  exit_code: number | null;
  seq: number;
}

export interface Alert {
  key: string;
  service: string;
  kind: string;
  cause: string;
  hint: string;
  pod: string;
  raised_at: number;
  cleared_at: number | null;
  count: number;
  details: string[];
  seq: number;
  active: boolean;
}

export interface Snapshot {
  project: string;
  namespace: string;
  services: Record<string, Service>;
  alerts: Alert[];
  cleared: Alert[];
  actions: string[];
  logs: LogEntry[];
  timeline: TimelineEvent[];
}

export type Message =
  | { kind: "snapshot"; data: Snapshot; seq: number }
  | { kind: "status"; data: Service; seq: number }
  | { kind: "log"; data: LogEntry; seq: number }
  | { kind: "event"; data: TimelineEvent; seq: number }
  | { kind: "alert"; data: Alert; seq: number };
