// The classic script (<script src=".../django_sse.js">) sets the global DjangoSSE: a page's
// TypeScript can type it from the same declarations (docs/client.rst shows this).
import type Client from "django-sse-jobs";

declare global {
  const DjangoSSE: typeof Client;
}

const watcher = DjangoSSE.watch("/sse/jobs/6f1c2a4e-0000-4000-8000-000000000001/events/", {
  onSuccess: (result) => console.log(result),
});
watcher.close();
// @ts-expect-error: the global has no such member
DjangoSSE.unwatch();

export {};
