"""Push provider plug-ins behind ``base.Provider``."""
