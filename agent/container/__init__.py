"""Docker runner for tasks with containerSettings (§8): pull, create, start, wait, kill, remove.

``runopts`` turns ``containerRunOptions`` into Docker SDK arguments (pure, no ``docker`` import).
"""
