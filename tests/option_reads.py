"""Which options of a method's typed section a run never reads (the contract's "every option is read" check)."""
from gendiv.distill.options import Options


def option_fields(model: type[Options], prefix: str = "") -> set[str]:
    """Dotted names of every option of a section, nested sections included (the method's name excluded)."""
    out = set()
    for name, field in model.model_fields.items():
        if name == "name":
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Options):
            out |= option_fields(ann, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def unread_options(section: Options, run, monkeypatch) -> set[str]:
    """Run ``run()`` while recording attribute reads on ``section`` and its nested sections; return the options of
    the section that were never read."""
    reads: set[tuple[int, str]] = set()
    prefixes: dict[int, str] = {}

    def record(self, item):
        if not item.startswith("_") and item in type(self).model_fields:
            reads.add((id(self), item))
        return object.__getattribute__(self, item)

    def walk(node, prefix=""):
        prefixes[id(node)] = prefix
        for key in type(node).model_fields:
            value = getattr(node, key)
            if isinstance(value, Options):
                walk(value, f"{prefix}{key}.")

    walk(section)
    monkeypatch.setattr(Options, "__getattribute__", record)
    try:
        run()
    finally:
        monkeypatch.undo()
    return option_fields(type(section)) - {prefixes[i] + key for i, key in reads if i in prefixes}
