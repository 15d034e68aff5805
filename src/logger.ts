/** Where turbocast reports what it cannot throw to anyone: a failing hook, a broker outage. */
export interface Logger {
  info(message: string, details?: Record<string, unknown>): void;
  warn(message: string, details?: Record<string, unknown>): void;
  error(message: string, details?: Record<string, unknown>): void;
}

export const consoleLogger: Logger = {
  info: (message, details) => console.info(`[turbocast] ${message}`, details ?? ""),
  warn: (message, details) => console.warn(`[turbocast] ${message}`, details ?? ""),
  error: (message, details) => console.error(`[turbocast] ${message}`, details ?? ""),
};

export const silentLogger: Logger = { info() {}, warn() {}, error() {} };
