export interface Reply { ok: boolean; error?: string; detail?: string; retry_after?: number;
  limit?: string; field?: string; [k: string]: unknown; }
export class OtpmailError extends Error {
  reply: Reply; error: string; detail: string; retryAfter?: number; limit?: string; field?: string;
}
export class Unreachable extends OtpmailError {}
export class Timeout extends OtpmailError {}
export class BadRequest extends OtpmailError {}
export class BadAddress extends OtpmailError {}
export class Forbidden extends OtpmailError {}
export class RateLimited extends OtpmailError {}
export class InvalidCode extends OtpmailError {}
export class Expired extends OtpmailError {}
export class Locked extends OtpmailError {}
export class NotFound extends OtpmailError {}
export class Unavailable extends OtpmailError {}
export class AlreadyFinished extends OtpmailError {}
export function defaultSocket(): string;
export function errorFor(reply: Reply): OtpmailError;
export class Client {
  constructor(opts?: { path?: string; timeout?: number });
  path: string; timeout: number; connections: number;
  request(req: { op: string; [k: string]: unknown }): Promise<Reply>;
  call(req: { op: string; [k: string]: unknown }): Promise<Reply>;
  pipeline(reqs: { op: string; [k: string]: unknown }[], opts?: { raiseErrors?: boolean }): Promise<Reply[]>;
  close(): void;
  ping(): Promise<Reply>;
  otpIssue(to: string, opts?: { purpose?: string; context?: string; [k: string]: unknown }): Promise<Reply>;
  otpVerify(to: string, code: string, opts?: { purpose?: string; context?: string }): Promise<Reply>;
  otpRevoke(to: string, opts?: { purpose?: string }): Promise<Reply>;
  mailSend(msg: { from: string; to: string[]; subject?: string; text?: string; html?: string; raw?: string; [k: string]: unknown }): Promise<Reply>;
  messageStatus(id: string): Promise<Reply>;
}
