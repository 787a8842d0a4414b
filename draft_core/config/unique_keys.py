"""A safe YAML loader that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a config with two ``train:`` sections trains
with the second alone. ``UniqueKeyLoader`` raises ``DuplicateKeyError`` naming the key and both lines.
"""

from __future__ import annotations

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicated keys (merge keys ``<<`` keep YAML's override rule)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if first is not key_node:
                    raise DuplicateKeyError(
                        f"the key {key!r} appears twice in one mapping, at line {first.start_mark.line + 1} and at line "
                        f"{key_node.start_mark.line + 1}; YAML would keep only the second silently. Merge the two "
                        f"into one (or delete one)."
                    )
        return super().construct_mapping(node, deep=deep)
