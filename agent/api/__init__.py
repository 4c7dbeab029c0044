"""The local Batch-compatible HTTP API (Starlette on uvicorn): the edge every route shares.

Modules, each owning one concern:

    app      create_app(settings, routes), BatchEdge middleware (request ids, Batch headers,
             authentication, body-size guard, last-resort 500), json_response / empty_response,
             base_url / request_url / metadata_url / principal, 501 for what a node cannot serve
    auth     Shared Key verification as the clients sign, task tokens (TokenVerifier hook,
             HmacTaskTokens), Authenticator, check_scope
    errors   BatchApiError and the code -> HTTP status table, Batch's error body, SpecError -> 400
    odata    $filter / $select / maxresults / $skiptoken parsing, paging with odata.nextLink
    bodies   request body -> agent.spec Document under the size limit
    formats  durations, RFC 3339 timestamps, RFC 1123 header dates, ETags as the service writes

The routes themselves (jobs, tasks, files) and the store belong to the service; this package
has no state. Import the submodules directly; nothing is re-exported here so that importing
``agent.api.errors`` does not pull in Starlette.
"""
