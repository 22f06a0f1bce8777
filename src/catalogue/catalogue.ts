/**
 * The managed base images this service offers (ListManagedMicrovmImages). Each is
 * built locally from Debian packages on first use and cached; a version changes
 * when its recipe changes. The store records when each version was first offered,
 * which is the `createdAt` users see.
 */
export interface ManagedImage {
  name: string;
  description: string;
  /** Versions, oldest first; the last is the default for new images. */
  versions: string[];
}

export const managedImages: readonly ManagedImage[] = [
  { name: "busybox", description: "BusyBox on the guest kernel: tiny, builds in seconds", versions: ["1"] },
  { name: "debian-12-minimal", description: "Debian 12 (bookworm), minimal", versions: ["1"] },
  { name: "nodejs-18", description: "Debian 12 with Node.js 18", versions: ["1"] },
  { name: "python-3.11", description: "Debian 12 with Python 3.11", versions: ["1"] },
];

export function findManagedImage(name: string): ManagedImage | undefined {
  return managedImages.find((m) => m.name === name);
}
