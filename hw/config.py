"""Read-only component properties that read the component's configuration object."""

__all__ = ["ConfigProperty"]


class ConfigProperty:
    """A read-only property of a component that returns the attribute of the same name of
    the component's ``config``, so a component does not restate its configuration's
    parameters one property at a time."""

    def __set_name__(self, owner, name):
        self._name = name
        self.__doc__ = f"The configuration's ``{name}``."

    def __get__(self, component, owner=None):
        if component is None:
            return self
        return getattr(component.config, self._name)
