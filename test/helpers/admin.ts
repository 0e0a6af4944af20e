/** Admin calls for tests: a swap run to its end, with every progress message and the error it ended with. */
import { type CallOptions, type Client, ConnectError } from "@connectrpc/connect";
import type { AdminService, SwapProgress } from "../../src/gen/airavata/v1/admin_pb.js";

export type AdminClient = Client<typeof AdminService>;

export async function swapTo(
  admin: AdminClient,
  variantId: string,
  options: CallOptions,
): Promise<{ events: SwapProgress[]; error: ConnectError | undefined }> {
  const events: SwapProgress[] = [];
  try {
    for await (const e of admin.swapVariant({ variantId }, options)) events.push(e);
    return { events, error: undefined };
  } catch (error) {
    return { events, error: ConnectError.from(error) };
  }
}
