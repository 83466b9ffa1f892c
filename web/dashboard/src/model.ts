// What the page knows: the snapshot `up` sent on connecting, with every change since applied in order.
// No state of its own beyond that (and bounded copies of the logs and timeline), so a reconnect that
// brings a new snapshot replaces everything and nothing can drift from the store.

import { AnsiUp } from "ansi_up";
import type { Alert, LogEntry, Message, Service, TimelineEvent } from "./types";

export const MAX_LOGS = 5000;
export const MAX_TIMELINE = 1000;
export const MAX_CLEARED = 200;

export interface LogLine extends LogEntry {
  id: number;
  html: string; // the text with its ANSI colours as HTML (made as it arrives: a colour left open carries on)
}

export class Model {
  project = "";
  namespace = "";
  services: Record<string, Service> = {};
  alerts: Record<string, Alert> = {}; // active, by key
  cleared: Alert[] = []; // newest last
  actions: string[] = [];
  logs: LogLine[] = [];
  timeline: TimelineEvent[] = []; // oldest first
  logsVersion = 0; // counts changes of logs (and timeline): their views redraw only when theirs changed
  timelineVersion = 0;
  private nextLine = 0;
  private ansi = new Map<string, AnsiUp>(); // one per pod: a colour left open carries to its next line

  apply(message: Message): void {
    switch (message.kind) {
      case "snapshot": {
        const s = message.data;
        this.project = s.project;
        this.namespace = s.namespace;
        this.services = s.services;
        this.alerts = Object.fromEntries(s.alerts.map((a) => [a.key, a]));
        this.cleared = s.cleared.slice(-MAX_CLEARED);
        this.actions = s.actions;
        this.logs = [];
        this.ansi.clear();
        for (const entry of s.logs.slice(-MAX_LOGS)) this.addLog(entry);
        this.timeline = s.timeline.slice(-MAX_TIMELINE);
        this.logsVersion++;
        this.timelineVersion++;
        break;
      }
      case "status":
        this.services = { ...this.services, [message.data.name]: message.data };
        break;
      case "log":
        this.addLog(message.data);
        if (this.logs.length > MAX_LOGS) this.logs.splice(0, this.logs.length - MAX_LOGS);
        this.logsVersion++;
        break;
      case "event":
        // The feed's seq is the event's own (the record's copy was published before it was numbered).
        this.timeline.push({ ...message.data, seq: message.seq });
        if (this.timeline.length > MAX_TIMELINE) this.timeline.splice(0, this.timeline.length - MAX_TIMELINE);
        this.timelineVersion++;
        break;
      case "alert": {
        const alert = message.data;
        const { [alert.key]: _gone, ...rest } = this.alerts;
        if (alert.active) {
          this.alerts = { ...rest, [alert.key]: alert };
        } else {
          this.alerts = rest;
          this.cleared = [...this.cleared, alert].slice(-MAX_CLEARED);
        }
        break;
      }
    }
  }

  private addLog(entry: LogEntry): void {
    const key = `${entry.service}/${entry.pod}`;
    let ansi = this.ansi.get(key);
    if (ansi === undefined) {
      ansi = new AnsiUp();
      ansi.use_classes = true; // colours from the theme's palette, readable on dark and light
      this.ansi.set(key, ansi);
    }
    this.logs.push({ ...entry, id: this.nextLine++, html: ansi.ansi_to_html(entry.text) });
  }
}
