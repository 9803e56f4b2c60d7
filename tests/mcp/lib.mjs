// What the MCP test scenarios share.

/// A tool result's text content, joined.
export function text(result) {
  return result.content.map((c) => c.text).join("");
}

/// `promise`, or a failure after `ms` (the timer does not keep node alive after).
export async function within(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}
