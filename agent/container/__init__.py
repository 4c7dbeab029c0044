"""Docker runner for tasks with containerSettings (§8): pull, create, start, wait, kill, remove.

``runopts`` turns ``containerRunOptions`` into Docker SDK arguments (pure, no ``docker`` import).
``build`` turns containerSettings + the task's argv, env, dirs and user into the
``ContainerRequest`` (``build_container_request``) and renders it for ``plan`` (``describe``);
pure as well; ``host`` reads what the host adds to every container (GPUs, RDMA devices,
mount propagation) for ``build``. ``image`` makes the image present (local as is, else a login
and a pull with per-pull credentials, retried on throttling) and maps engine errors to §8.2
failure codes. ``runner`` holds the shared lazy client (``LazyClient``) and ``ContainerRunner``,
the ``Runner`` of container tasks. ``orphans`` removes this node root's labelled containers that
no task owns (``remove_orphans``, ``sweep_orphans``). The image hook itself is
``agent.hooks.image.ImageHook``.
"""
