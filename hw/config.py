"""Components made from a frozen configuration object, and their read-only properties."""

from amaranth.lib import wiring

__all__ = ["ConfiguredComponent", "ConfigProperty"]


class ConfiguredComponent(wiring.Component):
    """A component whose parameters are the fields of its nested ``Config`` class.

    ``Config`` is a frozen dataclass that validates the parameters and derives everything
    others need without building hardware, its ``signature`` (the component's ports)
    included; the constructor makes the configuration, so a component is only created with
    valid parameters, and takes its signature from it.

    Parameters
    ----------
    **params
        The fields of the class's ``Config``.

    Raises
    ------
    TypeError, ValueError
        As the class's ``Config`` raises them.
    """

    def __init__(self, **params):
        self._config = self.Config(**params)
        super().__init__(self._config.signature)

    @property
    def config(self):
        """The component's validated ``Config``."""
        return self._config


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
